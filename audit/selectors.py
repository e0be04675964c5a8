"""Reads of the audit log."""

from audit.models import AuditEvent

PORTAL_PAGE_SIZE = 200


def events_of_tenant(tenant_id: int, *, limit: int = PORTAL_PAGE_SIZE):
    """The newest events about one tenant (never another's: the one filter is the tenant)."""
    return AuditEvent.objects.filter(tenant_id=tenant_id).order_by("-created_at", "-id")[:limit]
