"""The operator's admin for tenants: quotas and status next to this month's usage and budget
use (billing's daily rollups, one annotated query per page), a usage chart, suspend and resume.

It is billing's because its figures are (tenants does not import billing); billing.admin
registers it. Every change goes through tenants.services (quotas validated as everywhere,
caches forgotten).
"""

from django.contrib import admin, messages
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from billing import credits
from billing.selectors import tokens_by_model, with_month_usage
from saas_platform.charts import daily_chart
from saas_platform.errors import PlatformError
from saas_platform.periods import last_days
from tenants import services
from tenants.admin import ApiKeyInline, MembershipInline, badge
from tenants.models import Membership, Tenant

USAGE_CHART_DAYS = 30


def _short(n: int) -> str:
    """100000 as 100k, 1500000 as 1.5M: quotas at a glance."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + suffix
    return str(n)


class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "status_badge", "quota", "month_tokens_display",
                    "month_spend_display", "budget_use"]  # fmt: skip
    list_filter = ["status", "sso_required"]
    search_fields = ["slug", "name"]
    readonly_fields = ["status", "created_at"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "status", "created_at"]}),
        ("Quotas", {"fields": ["max_concurrent_requests", "max_tokens_per_minute",
                               "max_requests_per_minute", "model_allow_list",
                               "monthly_budget", "prepaid", "queue_weight",
                               "max_queued_requests"]}),
        ("Sign-in", {"fields": ["sso_required"]}),
    ]  # fmt: skip
    inlines = [MembershipInline, ApiKeyInline]
    actions = ["suspend", "resume"]
    change_form_template = "admin/tenants/tenant/change_form.html"

    class Media:
        css = {"all": ["saas_platform/admin.css", "saas_platform/charts.css"]}
        js = ["vendor/chart.js/chart.umd.min.js", "saas_platform/charts.js"]

    def get_queryset(self, request):
        return with_month_usage(super().get_queryset(request))

    # --- changelist columns ---------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_badge(self, tenant):
        return badge(tenant.status, tenant.get_status_display())

    @admin.display(description="quota")
    def quota(self, tenant):
        rpm = tenant.max_requests_per_minute
        return format_html(
            '{} <abbr title="concurrent requests">conc.</abbr> · {} '
            '<abbr title="tokens per minute">TPM</abbr>{}',
            tenant.max_concurrent_requests,
            _short(tenant.max_tokens_per_minute),
            format_html(' · {} <abbr title="requests per minute">RPM</abbr>', _short(rpm))
            if rpm
            else "",
        )

    @admin.display(description="tokens this month", ordering="month_tokens")
    def month_tokens_display(self, tenant):
        return f"{tenant.month_tokens:,}"

    @admin.display(description="spend this month", ordering="month_spend")
    def month_spend_display(self, tenant):
        return f"{tenant.month_spend:,.2f}"

    @admin.display(description="budget use")
    def budget_use(self, tenant):
        if tenant.monthly_budget is None:
            return "no budget"
        if not tenant.monthly_budget:
            return format_html('<span class="admin-meter-label">spent {} of 0.00</span>',
                               f"{tenant.month_spend:.2f}")  # fmt: skip
        share = float(tenant.month_spend / tenant.monthly_budget * 100)
        level = "over" if share >= 100 else "high" if share >= 80 else "ok"
        return format_html(
            '<span class="admin-meter-label">{}% of {}</span>'
            '<meter class="admin-meter admin-meter-{}" min="0" max="100" low="80" high="99.9" '
            'optimum="0" value="{}" aria-label="{}% of the monthly budget used"></meter>',
            f"{share:.0f}", f"{tenant.monthly_budget:,.2f}", level, f"{min(share, 100):.1f}",
            f"{share:.0f}",
        )  # fmt: skip

    # --- saving through the services ------------------------------------------------------

    def save_model(self, request, obj, form, change):
        # The form already ran Tenant.clean (validate_tenant_config); saving through the
        # services keeps validation and cache invalidation in one place.
        fields = {name: getattr(obj, name) for name in services.CONFIG_FIELDS}
        if change:
            services.tenant_update(tenant=obj, name=obj.name, **fields)
        else:
            saved = services.tenant_register(slug=obj.slug, name=obj.name, **fields)
            obj.pk = saved.pk

    def delete_model(self, request, obj):
        # A tenant that used the platform is suspended with its keys revoked, never deleted.
        if not services.tenant_remove(tenant=obj):
            messages.warning(request, f"{obj.slug} has usage: suspended, keys revoked, kept.")

    def delete_queryset(self, request, queryset):
        for tenant in queryset:
            self.delete_model(request, tenant)

    def save_formset(self, request, form, formset, change):
        if formset.model is not Membership:
            return super().save_formset(request, form, formset, change)
        formset.save(commit=False)
        for membership in formset.deleted_objects:
            try:
                services.membership_remove(membership=membership)
            except PlatformError as error:  # the last owner stays
                messages.error(request, error.message)
        for membership in formset.new_objects + [obj for obj, _ in formset.changed_objects]:
            services.membership_set(tenant=form.instance, user=membership.user,
                                    role=membership.role)  # fmt: skip
        return None

    # --- suspend and resume ---------------------------------------------------------------

    @admin.action(description="Suspend selected tenants", permissions=["change"])
    def suspend(self, request, queryset):
        tenants = list(queryset)
        for tenant in tenants:
            services.tenant_suspend(tenant=tenant)
        messages.success(request, f"Suspended {len(tenants)} tenant(s): their keys are refused.")

    @admin.action(description="Resume selected tenants", permissions=["change"])
    def resume(self, request, queryset):
        tenants = list(queryset)
        for tenant in tenants:
            services.tenant_resume(tenant=tenant)
        messages.success(request, f"Resumed {len(tenants)} tenant(s).")

    def get_urls(self):
        own = [
            path("<int:pk>/status/", self.admin_site.admin_view(self.status_view),
                 name="tenants_tenant_status"),
        ]  # fmt: skip
        return own + super().get_urls()

    def status_view(self, request, pk):
        """The change page's Suspend / Resume button."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        tenant = get_object_or_404(Tenant, pk=pk)
        if not self.has_change_permission(request, tenant):
            return HttpResponseRedirect(reverse("admin:index"))
        if request.POST.get("status") == Tenant.Status.SUSPENDED:
            services.tenant_suspend(tenant=tenant)
            messages.success(request, f"{tenant.slug} is suspended: its keys are refused.")
        else:
            services.tenant_resume(tenant=tenant)
            messages.success(request, f"{tenant.slug} is active again.")
        return HttpResponseRedirect(reverse("admin:tenants_tenant_change", args=[tenant.pk]))

    # --- the change page's usage chart ----------------------------------------------------

    @staticmethod
    def _credits_summary(tenant) -> str:
        balance = credits.credits_balance(tenant)
        if not tenant.prepaid and not balance.granted:
            return ""
        return (
            f" Prepaid credits: {balance.balance:,.2f} {balance.currency} left of "
            f"{balance.granted:,.2f} granted{' (prepaid)' if tenant.prepaid else ''}."
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        tenant = self.get_object(request, object_id)
        if tenant is not None:
            first, last = last_days(USAGE_CHART_DAYS)
            extra_context["usage_chart"] = daily_chart(
                f"Tokens per day by model, last {USAGE_CHART_DAYS} days",
                tokens_by_model(tenant=tenant, first=first, last=last), first, last,
            )  # fmt: skip
            extra_context["month_summary"] = (
                f"This month: {tenant.month_tokens:,} tokens, {tenant.month_spend:,.2f} spent"
                + (
                    ""
                    if tenant.monthly_budget is None
                    else f" of a {tenant.monthly_budget:,.2f} budget"
                )
                + "."
                + self._credits_summary(tenant)
            )
            extra_context["status_url"] = reverse("admin:tenants_tenant_status", args=[tenant.pk])
        return super().change_view(request, object_id, form_url, extra_context)
