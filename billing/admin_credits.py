"""The operator's admin for prepaid credits: the credit ledger read-only, and its add page is
the grant form (validated by billing.credits.validate_credit_grant, saved by credits_grant), so
a grant made here is refused or recorded exactly as one made with `credits grant`. billing.admin
registers it."""

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from billing import credits
from billing.models import CreditEntry


class GrantForm(forms.ModelForm):
    expires = forms.DateField(
        required=False, help_text="Valid through this day (UTC); empty: no expiry."
    )

    class Meta:
        model = CreditEntry
        fields = ["tenant", "amount", "reason"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.kind = CreditEntry.Kind.GRANT
        if "reason" in self.fields:  # the add form; a row's own page shows it read-only
            self.fields["reason"].required = True

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            credits.validate_credit_grant(
                amount=data.get("amount"), reason=data.get("reason"), expires=data.get("expires")
            )
        except ValidationError as error:
            for name, messages in error.message_dict.items():
                self.add_error(name if name in self.fields else None, messages)
        return data


class CreditEntryAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "tenant",
        "kind",
        "amount",
        "grant_id",
        "expires_at",
        "period",
        "created_at",
        "actor",
        "reason",
    ]
    list_select_related = ["tenant"]
    list_filter = ["kind"]
    search_fields = ["tenant__slug", "reason", "actor"]
    autocomplete_fields = ["tenant"]
    form = GrantForm

    def has_change_permission(self, request, obj=None):
        return obj is None  # the ledger is append-only: rows are viewed, never edited

    def has_delete_permission(self, request, obj=None):
        return False

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["tenant", "amount", "reason", "expires"]
        return [f.name for f in CreditEntry._meta.fields]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else [f.name for f in CreditEntry._meta.fields]

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        grant = credits.credits_grant(
            tenant=data["tenant"],
            amount=data["amount"],
            reason=data["reason"],
            expires=data.get("expires"),
            actor=request.user.get_username(),
        )
        obj.pk = grant.pk
        obj.created_at = grant.created_at
