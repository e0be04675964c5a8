"""The tenants' webhook endpoints, deliveries (with their attempts) and spend alerts, read-only
for staff: the URL and events are the tenant's to set, in the portal. A delivery can be sent
again (the same event id and body, so a receiver that has it ignores it). A tenant's own alert
thresholds can be set here too, through the portal's rule (billing.alerts.validate_thresholds)."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from billing.alerts import validate_thresholds
from billing.models import (
    SpendAlert,
    SpendAlertRule,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from billing.webhooks import webhook_delivery_resend


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(_ReadOnly):
    list_display = ["tenant", "url", "enabled", "failing_since", "disabled_at", "created_at"]
    list_select_related = ["tenant"]
    list_filter = ["enabled"]
    search_fields = ["tenant__slug", "url"]
    exclude = ["secret", "previous_secret"]  # secrets are never shown again


class AttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ["attempted_at", "status_code", "duration_ms", "error", "response_head"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(_ReadOnly):
    list_display = ["event_id", "event_type", "endpoint", "state", "created_at",
                    "next_attempt_at", "delivered_at"]  # fmt: skip
    list_select_related = ["endpoint__tenant"]
    list_filter = ["state", "event_type"]
    search_fields = ["event_id", "endpoint__tenant__slug"]
    inlines = [AttemptInline]
    actions = ["resend"]

    def has_resend_permission(self, request) -> bool:
        return (
            request.user.is_active and request.user.is_staff and self.has_view_permission(request)
        )

    @admin.action(description="Send the selected deliveries again", permissions=["resend"])
    def resend(self, request, queryset):
        count = 0
        for delivery in queryset:
            webhook_delivery_resend(delivery=delivery)
            count += 1
        messages.success(request, f"{count} deliveries queued to be sent again.")


@admin.register(SpendAlert)
class SpendAlertAdmin(_ReadOnly):
    list_display = ["tenant", "scope", "scope_ref", "period", "threshold", "spend", "budget",
                    "currency", "created_at", "emailed_at"]  # fmt: skip
    list_select_related = ["tenant"]
    list_filter = ["scope", "threshold"]
    search_fields = ["tenant__slug", "scope_ref"]


class SpendAlertRuleForm(forms.ModelForm):
    class Meta:
        model = SpendAlertRule
        fields = ["tenant", "scope", "scope_ref", "thresholds"]

    def clean_thresholds(self):
        try:
            return validate_thresholds(self.cleaned_data["thresholds"])
        except ValidationError as error:
            raise ValidationError(error.message_dict["thresholds"]) from None


@admin.register(SpendAlertRule)
class SpendAlertRuleAdmin(admin.ModelAdmin):
    form = SpendAlertRuleForm
    list_display = ["tenant", "scope", "scope_ref", "thresholds"]
    list_select_related = ["tenant"]
    search_fields = ["tenant__slug"]
    autocomplete_fields = ["tenant"]
