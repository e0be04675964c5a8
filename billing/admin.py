"""A basic operator admin for billing: the ledger and finalized invoices read-only, prices
added (never edited: a change is a new price from a later time), credit notes issued."""

from django.contrib import admin

from billing.models import CreditNote, Invoice, InvoiceLine, Price, UsageRecord


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["model_id", "tenant", "input_per_million", "output_per_million", "currency",
                    "effective_from"]  # fmt: skip
    list_filter = ["currency", "tenant"]
    search_fields = ["model_id", "tenant__slug"]

    def has_change_permission(self, request, obj=None):
        return obj is None  # prices are added, never edited

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["request_id", "tenant", "model_id", "prompt_tokens", "completion_tokens",
                    "amount", "currency", "status", "occurred_at", "counted"]  # fmt: skip
    list_filter = ["status", "counted", "model_id"]
    search_fields = ["request_id", "tenant__slug", "api_key_prefix"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False  # counting tens of millions of rows is slow


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


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["number", "tenant", "period", "total", "currency", "finalized_at"]
    list_filter = ["period", "currency"]
    search_fields = ["number", "tenant__slug"]
    inlines = [InvoiceLineInline, CreditNoteInline]


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ["number", "invoice", "amount", "reason", "created_at"]
    search_fields = ["number", "invoice__number"]
