"""The operator's admin for billing: the ledger and finalized invoices read-only, prices added
(never edited: a change is a new price from a later time), months closed, invoices exported
(CSV, PDF, JSON: billing.exports) and corrected by credit notes (billing.invoices). The usage
dashboard (billing.admin_dashboard) stands in for the daily rollups' list. The tenants' pages
show their usage and spend, so their admin is billing's too (billing.admin_tenants)."""

from datetime import date
from decimal import Decimal, InvalidOperation

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import DecimalField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html_join

from billing import admin_webhooks, exports
from billing.admin_credits import CreditEntryAdmin
from billing.admin_dashboard import usage_dashboard
from billing.admin_tenants import TenantAdmin
from billing.downloads import invoice_download
from billing.invoices import (
    InvoiceError,
    credit_note_issue,
    invoice_for,
    invoices_close_month,
)
from billing.models import (
    CreditEntry,
    CreditNote,
    DailyUsage,
    Invoice,
    InvoiceCloseFailure,
    InvoiceLine,
    Price,
    UsageRecord,
)
from billing.pricing import price_set, validate_price
from saas_platform import periods
from tenants.models import Tenant

admin.site.register(Tenant, TenantAdmin)
admin.site.register(CreditEntry, CreditEntryAdmin)
__all__ = ["admin_webhooks"]  # registers the webhook and alert pages


class AdminAssets:
    css = {"all": ["saas_platform/admin.css"]}


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class PriceForm(forms.ModelForm):
    """Checked by `validate_price`, as `manage.py price set` is: same rules, same messages."""

    # Longer than the column, so that "dollars" gets validate_price's message, not a length's.
    currency = forms.CharField(
        max_length=16, required=False, help_text="ISO code, e.g. USD (empty: BILLING_CURRENCY)."
    )

    class Meta:
        model = Price
        fields = ["model_id", "tenant", "currency", "input_per_million",
                  "cached_input_per_million", "output_per_million", "effective_from"]  # fmt: skip

    def clean(self):
        data = super().clean()
        try:
            data["currency"] = validate_price(
                input_per_million=data.get("input_per_million"),
                output_per_million=data.get("output_per_million"),
                cached_input_per_million=data.get("cached_input_per_million"),
                currency=data.get("currency"),
                effective_from=data.get("effective_from"),
            )
        except ValidationError as error:
            for field, messages_ in error.message_dict.items():
                if field not in self.errors:  # a field's own error (e.g. "Enter a number") first
                    self.add_error(field, messages_)
        return data


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    form = PriceForm
    list_display = ["model_id", "tenant", "input_per_million", "cached_input_per_million",
                    "output_per_million", "currency", "effective_from"]  # fmt: skip
    list_select_related = ["tenant"]
    list_filter = ["currency", "tenant"]
    search_fields = ["model_id", "tenant__slug"]
    autocomplete_fields = ["tenant"]

    def has_change_permission(self, request, obj=None):
        return obj is None  # prices are added, never edited

    def save_model(self, request, obj, form, change):
        # Through the service the CLI uses: one path for every price that is added.
        saved = price_set(
            model_id=obj.model_id,
            input_per_million=obj.input_per_million,
            output_per_million=obj.output_per_million,
            cached_input_per_million=obj.cached_input_per_million,
            currency=obj.currency,
            tenant=obj.tenant,
            effective_from=obj.effective_from,
        )
        obj.pk = saved.pk

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["request_id", "tenant", "model_id", "prompt_tokens", "completion_tokens",
                    "amount", "currency", "status", "occurred_at", "counted"]  # fmt: skip
    list_select_related = ["tenant"]
    list_filter = ["status", "counted", "model_id"]
    search_fields = ["request_id", "tenant__slug", "api_key_prefix"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False  # counting tens of millions of rows is slow


@admin.register(DailyUsage)
class DailyUsageAdmin(ReadOnlyAdmin):
    """Its list is the usage dashboard: charts and rankings from these rollups."""

    class Media:
        css = {"all": ["saas_platform/admin.css", "saas_platform/charts.css"]}
        js = ["vendor/chart.js/chart.umd.min.js", "saas_platform/charts.js"]

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff

    def changelist_view(self, request, extra_context=None):
        return usage_dashboard(self, request)


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    readonly_fields = ["kind", "model_id", "requests", "input_tokens", "output_tokens",
                       "input_per_million", "output_per_million", "amount"]  # fmt: skip
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


class CreditNoteInline(admin.TabularInline):
    model = CreditNote
    extra = 0
    can_delete = False
    readonly_fields = ["number", "amount", "reason", "created_at"]
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


def export_url(tenant_id: int, period: date, fmt: str) -> str:
    kwargs = {"tenant_id": tenant_id, "period": f"{period:%Y-%m}", "fmt": fmt}
    return reverse("admin:billing_invoice_export", kwargs=kwargs)


def export_links(tenant_id: int, period: date):
    return format_html_join(
        " ", '<a href="{}" download>{}</a>',
        ((export_url(tenant_id, period, fmt), fmt.upper()) for fmt in exports.FORMATS),
    )  # fmt: skip


def with_period_amount(tenants, period: date):
    """Tenants annotated with `period_amount`: the month's usage from the daily rollups (an
    estimate of the draft: the invoice rounds per line and adds late usage)."""
    field = DecimalField(max_digits=24, decimal_places=12)
    month = DailyUsage.objects.filter(tenant=OuterRef("pk"), day__gte=period,
                                      day__lt=periods.next_month(period))  # fmt: skip
    total = month.order_by().values("tenant").annotate(total=Sum("amount")).values("total")
    amount = Coalesce(Subquery(total, output_field=field), Value(Decimal(0)), output_field=field)
    return tenants.annotate(period_amount=amount)


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["number", "tenant", "period_display", "total", "currency", "credited",
                    "finalized_at", "files"]  # fmt: skip
    list_select_related = ["tenant"]
    list_filter = ["period", "currency"]
    search_fields = ["number", "tenant__slug"]
    inlines = [InvoiceLineInline, CreditNoteInline]
    change_list_template = "admin/billing/invoice/change_list.html"
    change_form_template = "admin/billing/invoice/change_form.html"
    Media = AdminAssets

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(credited_total=Sum("credit_notes__amount"))

    @admin.display(description="period", ordering="period")
    def period_display(self, invoice):
        return f"{invoice.period:%Y-%m}"

    @admin.display(description="credited", ordering="credited_total")
    def credited(self, invoice):
        return invoice.credited_total or "—"

    @admin.display(description="download")
    def files(self, invoice):
        return export_links(invoice.tenant_id, invoice.period)

    def get_urls(self):
        view = self.admin_site.admin_view
        own = [
            path("close/", view(self.close_view), name="billing_invoice_close"),
            path("export/<int:tenant_id>/<str:period>.<str:fmt>", view(self.export_view),
                 name="billing_invoice_export"),
            path("<int:pk>/credit/", view(self.credit_view), name="billing_invoice_credit"),
        ]  # fmt: skip
        return own + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        invoice = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if invoice is not None:
            extra_context["export_links"] = export_links(invoice.tenant_id, invoice.period)
            extra_context["credit_url"] = reverse("admin:billing_invoice_credit", args=[invoice.pk])
            extra_context["credit_left"] = invoice.total - (invoice.credited_total or 0)
        return super().change_view(request, object_id, form_url, extra_context)

    # --- exports --------------------------------------------------------------------------

    def export_view(self, request, tenant_id, period, fmt):
        """A month's invoice of a tenant as a file: the finalized one, else the draft."""
        if fmt not in exports.FORMATS:
            raise Http404("unknown format")
        try:
            month = periods.parse_period(period)
        except ValueError:
            raise Http404("bad period") from None
        return invoice_download(invoice_for(get_object_or_404(Tenant, pk=tenant_id), month), fmt)

    # --- closing months -------------------------------------------------------------------

    def close_view(self, request):
        """A month's drafts (estimated from the daily rollups) with Finalize per tenant, and
        Close the month for every tenant not closed yet."""
        if not self.has_view_permission(request):
            return HttpResponseRedirect(reverse("admin:index"))
        last_month = periods.last_month()
        try:
            period = periods.parse_period(request.POST.get("period") or request.GET.get("period")
                                  or f"{last_month:%Y-%m}")  # fmt: skip
        except ValueError as error:
            messages.error(request, str(error))
            period = last_month
        if request.method == "POST":
            if not request.user.has_perm("billing.add_invoice"):
                return HttpResponseRedirect(reverse("admin:index"))
            self._close(request, period, request.POST.get("tenant"))
            url = reverse("admin:billing_invoice_close")
            return HttpResponseRedirect(f"{url}?period={period:%Y-%m}")
        closed = dict(Invoice.objects.filter(period=period).values_list("tenant_id", "number"))
        failures = {f.tenant_id: f for f in InvoiceCloseFailure.objects.filter(period=period)}
        rows = [
            {"tenant": tenant, "number": closed.get(tenant.pk),
             "failure": failures.get(tenant.pk), "links": export_links(tenant.pk, period)}
            for tenant in with_period_amount(Tenant.objects.order_by("slug"), period)
        ]  # fmt: skip
        context = {
            **self.admin_site.each_context(request),
            "title": f"Close {period:%Y-%m}",
            "opts": self.model._meta,
            "period": period,
            "rows": rows,
            "open_count": sum(1 for row in rows if row["number"] is None),
            "media": self.media,
        }
        return TemplateResponse(request, "admin/billing/invoice/close.html", context)

    def _close(self, request, period: date, tenant_id: str | None) -> None:
        chosen = Tenant.objects.filter(pk=tenant_id) if tenant_id else None
        try:
            result = invoices_close_month(period=period, tenants=chosen)
        except InvoiceError as error:
            messages.error(request, error.message)
            return
        for failure in result.failures:
            messages.error(request, f"{failure.tenant.slug} not closed: {failure.message}")
        numbers = [invoice.number for invoice in result.finalized]
        if numbers:
            messages.success(request, f"Finalized {len(numbers)} invoice(s) for {period:%Y-%m}: "
                                      f"{', '.join(numbers)}.")  # fmt: skip
        elif not result.failures:
            messages.info(request, f"Nothing left to close for {period:%Y-%m}.")

    # --- credit notes ---------------------------------------------------------------------

    def credit_view(self, request, pk):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        invoice = get_object_or_404(Invoice, pk=pk)
        if not request.user.has_perm("billing.add_creditnote"):
            return HttpResponseRedirect(reverse("admin:index"))
        try:
            amount = Decimal(request.POST.get("amount", "").strip())
            if not amount.is_finite():
                raise InvalidOperation
        except InvalidOperation:
            messages.error(request, "The amount must be a number, e.g. 12.50.")
        else:
            try:
                note = credit_note_issue(invoice=invoice, amount=amount,
                                         reason=request.POST.get("reason", ""))  # fmt: skip
            except InvoiceError as error:
                messages.error(request, f"No credit note issued: {error.message}.")
            else:
                messages.success(request, f"Credit note {note.number} issued for {note.amount} "
                                          f"{invoice.currency}.")  # fmt: skip
        return HttpResponseRedirect(reverse("admin:billing_invoice_change", args=[invoice.pk]))


@admin.register(InvoiceCloseFailure)
class InvoiceCloseFailureAdmin(ReadOnlyAdmin):
    """Tenants whose month could not be closed; each is retried by the next close, and its row
    goes when its invoice is finalized."""

    list_display = ["tenant", "period", "error", "attempts", "first_failed_at", "last_failed_at"]
    list_select_related = ["tenant"]
    list_filter = ["period"]


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ["number", "invoice", "amount", "reason", "created_at"]
    list_select_related = ["invoice"]
    search_fields = ["number", "invoice__number"]
