"""The tenant's audit log, for its owners: what changed, by whom, from where (newest first)."""

from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit.selectors import PORTAL_PAGE_SIZE, events_of_tenant
from portal.access import member_required


@require_GET
@member_required(owner=True)
def audit_log(request):
    events = events_of_tenant(request.tenant.pk)
    return render(request, "portal/audit.html", {"events": events, "limit": PORTAL_PAGE_SIZE})
