"""The tenant's prepaid credits: balance, grants with their expiry, draw-downs and lapses."""

from django.shortcuts import render
from django.views.decorators.http import require_GET

from billing import credits
from portal.access import member_required

ENTRIES_SHOWN = 200  # the newest rows of the credit ledger; the CLI lists them all


@require_GET
@member_required
def credit_list(request):
    entries = list(credits.credit_entries(request.tenant)[:ENTRIES_SHOWN])
    context = {
        "balance": credits.credits_balance(request.tenant),
        "grants": [e for e in entries if e.kind == e.Kind.GRANT],
        "uses": [e for e in entries if e.kind != e.Kind.GRANT],
        "prepaid": request.tenant.prepaid,
    }
    return render(request, "portal/credits.html", context)
