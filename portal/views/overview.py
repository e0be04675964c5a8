from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from portal import selectors
from portal.access import member_required
from saas_platform.periods import month_start
from tenants.models import ApiKey


@require_GET
@member_required
def overview(request):
    tenant = request.tenant
    month = month_start()
    now = timezone.now()
    keys = list(tenant.api_keys.all())
    context = {
        "summary": selectors.month_summary(tenant, month),
        "chart": selectors.usage_chart(tenant, month, selectors.month_last_day(month)),
        "active_keys": sum(1 for key in keys if key.state_at(now) == ApiKey.State.ACTIVE),
        "has_keys": bool(keys),
        "recent_invoices": selectors.invoices_of(tenant)[:3],
    }
    return render(request, "portal/overview.html", context)
