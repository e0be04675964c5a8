"""Finalized invoices by number, and this month's running draft as "current"."""

from django.http import Http404
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from billing.downloads import invoice_download
from billing.invoices import invoice_data, invoice_for
from billing.models import Invoice
from portal import selectors
from portal.access import member_required
from saas_platform.periods import month_start

CURRENT = "current"


def _invoice_data(request, ref: str):
    if ref == CURRENT:
        return invoice_for(request.tenant, month_start())
    return invoice_data(get_object_or_404(Invoice, number=ref, tenant=request.tenant))


@require_GET
@member_required
def invoice_list(request):
    context = {
        "invoices": selectors.invoices_of(request.tenant),
        "current": invoice_for(request.tenant, month_start()),
    }
    return render(request, "portal/invoices.html", context)


@require_GET
@member_required
def invoice_detail(request, ref: str):
    data = _invoice_data(request, ref)
    return render(request, "portal/invoice.html", {"invoice": data, "ref": ref})


@require_GET
@member_required
def invoice_file(request, ref: str, fmt: str):
    if fmt not in ("pdf", "csv", "json"):
        raise Http404("No such format.")
    return invoice_download(_invoice_data(request, ref), fmt)
