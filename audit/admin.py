"""The audit log in the operator's admin: read-only, filterable by tenant, actor, action and
time, each row's changes shown, and the filtered list as CSV."""

import io
import json

from django.contrib import admin
from django.http import HttpResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.http import content_disposition_header

from audit.models import AuditEvent
from saas_platform.spreadsheets import SafeWriter

CSV_COLUMNS = ["time", "actor_kind", "actor", "os_user", "address", "user_agent", "tenant",
               "action", "object_type", "object_id", "object", "changes"]  # fmt: skip


def changes_text(event: AuditEvent) -> str:
    return json.dumps(event.changes, sort_keys=True, ensure_ascii=False)


def audit_csv(events) -> bytes:
    out = io.StringIO()
    writer = SafeWriter(out)
    writer.writerow(CSV_COLUMNS)
    for e in events.iterator():
        writer.writerow([
            e.created_at.isoformat(), e.actor_kind, e.actor_name, e.os_user, e.address or "",
            e.user_agent, e.tenant_slug, e.action, e.object_type, e.object_id, e.object_repr,
            changes_text(e),
        ])  # fmt: skip
    return out.getvalue().encode()


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor_name", "actor_kind", "tenant_slug", "action",
                    "object_repr", "changes_shown", "address"]  # fmt: skip
    list_filter = ["action", "actor_kind", "created_at", "tenant_slug", "actor_name"]
    search_fields = ["actor_name", "tenant_slug", "object_repr", "action", "address"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields if f.name != "changes"]
    readonly_fields.append("changes_shown")
    exclude = ["changes"]
    change_list_template = "audit/change_list.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="changes")
    def changes_shown(self, event: AuditEvent):
        return format_html_join(
            ", ", "{}: {} → {}", ((f, pair[0], pair[1]) for f, pair in event.changes.items())
        )

    def get_urls(self):
        export = self.admin_site.admin_view(self.export_csv)
        return [path("export.csv", export, name="audit_auditevent_export"), *super().get_urls()]

    def export_csv(self, request):
        """The list as filtered on the page (the same query string), as CSV."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        changelist = self.get_changelist_instance(request)
        events = changelist.get_queryset(request)
        filename = f"audit-{timezone.now():%Y%m%dT%H%M%SZ}.csv"
        return HttpResponse(
            audit_csv(events),
            content_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": content_disposition_header(True, filename),
                "Cache-Control": "private, no-store",
            },
        )
