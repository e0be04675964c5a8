from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.utils import timezone

from billing.alerts import validate_thresholds
from billing.webhooks import EVENT_TYPES as WEBHOOK_EVENT_TYPES
from portal.sign_ins import sign_in_failed, sign_in_succeeded
from saas_platform.text import validate_display_name
from tenants.models import Membership
from tenants.quotas import BUDGET_DECIMAL_PLACES, BUDGET_MAX_DIGITS, KeyLimits, validate_key_limits
from tenants.sso import password_sign_in_refused

MAX_USAGE_SPAN_DAYS = 366


class DateInput(forms.DateInput):
    input_type = "date"


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="What uses the key, e.g. “production web app”.",
        validators=[validate_display_name],
    )  # fmt: skip
    expires_on = forms.DateField(
        required=False, widget=DateInput, label="Expires on",
        help_text="Optional. The key works through the end of this day (UTC).",
    )  # fmt: skip

    def clean_expires_on(self) -> date | None:
        day = self.cleaned_data["expires_on"]
        if day is not None and day < timezone.now().date():
            raise forms.ValidationError("Pick today or a later day.")
        return day

    @property
    def expires_at(self) -> datetime | None:
        day = self.cleaned_data["expires_on"]
        if day is None:
            return None
        return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


class KeyLimitsForm(forms.Form):
    """A key's own limits, each at most its tenant's (validated by tenants' one rule)."""

    max_concurrent_requests = forms.IntegerField(
        required=False, label="Concurrent requests",
        help_text="Empty: the tenant's limit alone.",
    )  # fmt: skip
    max_tokens_per_minute = forms.IntegerField(required=False, label="Tokens per minute")
    max_requests_per_minute = forms.IntegerField(required=False, label="Requests per minute")
    monthly_budget = forms.DecimalField(
        required=False, label="Monthly budget", max_digits=BUDGET_MAX_DIGITS,
        decimal_places=BUDGET_DECIMAL_PLACES,
        help_text=f"In {settings.BILLING_CURRENCY}; empty: the tenant's budget only.",
    )  # fmt: skip
    model_allow_list = forms.MultipleChoiceField(
        required=False, label="Models", widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every model the tenant may use.",
    )  # fmt: skip

    def __init__(self, *args, tenant, models: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.fields["model_allow_list"].choices = [(m, m) for m in models]

    @classmethod
    def for_key(cls, api_key, models: list[str], data=None) -> "KeyLimitsForm":
        limits = api_key.limits
        initial = {name: getattr(limits, name) for name in cls.base_fields}
        return cls(data, initial=initial, tenant=api_key.tenant, models=models)

    @property
    def limits(self) -> KeyLimits:
        numbers = {name: self.cleaned_data.get(name) for name in self.base_fields}
        numbers["model_allow_list"] = list(numbers["model_allow_list"] or [])
        return KeyLimits(**numbers)

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                validate_key_limits(self.limits, self.tenant.config)
            except ValidationError as error:
                for field, messages in error.message_dict.items():
                    self.add_error(field, messages)
        return cleaned


# The days a usage period may name: far beyond any usage, and well inside what dates and
# datetimes can hold (9999-12-31 has no next day to end a period at: it was a 500).
FIRST_USAGE_DAY = date(2000, 1, 1)
LAST_USAGE_DAY = date(2099, 12, 31)


def _usage_day(label: str, help_text: str = "") -> forms.DateField:
    outside = f"Pick a day from {FIRST_USAGE_DAY} to {LAST_USAGE_DAY}."
    return forms.DateField(
        label=label,
        help_text=help_text,
        widget=DateInput(attrs={"min": FIRST_USAGE_DAY, "max": LAST_USAGE_DAY}),
        validators=[
            MinValueValidator(FIRST_USAGE_DAY, message=outside),
            MaxValueValidator(LAST_USAGE_DAY, message=outside),
        ],
    )


class UsageFilterForm(forms.Form):
    start = _usage_day("From")
    end = _usage_day("To", help_text="Inclusive.")
    model = forms.ChoiceField(required=False, label="Model")

    def __init__(self, *args, models: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [("", "All models"), *((m, m) for m in models)]

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end:
            if end < start:
                self.add_error("end", "Pick a day on or after the start.")
            elif (end - start).days >= MAX_USAGE_SPAN_DAYS:
                self.add_error("end", f"Pick at most {MAX_USAGE_SPAN_DAYS} days at a time.")
        return cleaned


class InviteForm(forms.Form):
    email = forms.EmailField(help_text="They get an email with a link to accept.")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class PortalPasswordResetForm(PasswordResetForm):
    """Django's form skips accounts without a usable password; members invited before an
    invitation had to be accepted have none until they set one, so they can still ask for a
    link. Staff accounts never get one here: a portal form must not hand out the operator's
    accounts (staff reset passwords in the admin or with `manage.py changepassword`)."""

    def get_users(self, email):
        # Nor to members of a tenant that requires single sign-on: their password is not used.
        users = (
            get_user_model()
            ._default_manager.filter(
                email__iexact=email, is_active=True, is_staff=False, is_superuser=False
            )
            .exclude(memberships__tenant__sso_required=True)
        )
        return (user for user in users if user.has_usable_password() or user.memberships.exists())

    def save(self, **kwargs):
        # The link goes to SITE_URL, never to the Host the request came with.
        site = urlsplit(settings.SITE_URL)
        kwargs.update(domain_override=site.netloc, use_https=site.scheme == "https")
        return super().save(**kwargs)


SSO_REQUIRED_MESSAGE = (
    "Your organisation signs in through single sign-on: use “Sign in with single sign-on”."
)


class PasswordSignInMixin:
    """The portal's and the admin's password forms: refused for members of a tenant that
    requires single sign-on, and every attempt's outcome reported once (portal/sign_ins.py)."""

    def confirm_login_allowed(self, user):
        super().confirm_login_allowed(user)
        if password_sign_in_refused(user):
            raise forms.ValidationError(SSO_REQUIRED_MESSAGE, code="sso_required")

    def clean(self):
        try:
            cleaned = super().clean()
        except forms.ValidationError as error:
            sign_in_failed(self.request, method="password", reason=error.code or "invalid_login",
                           username=str(self.data.get("username", "")))  # fmt: skip
            raise
        if self.get_user() is not None:  # None: a field was left empty, nothing was tried
            sign_in_succeeded(self.request, user=self.get_user(), method="password")
        return cleaned


class PortalSignInForm(PasswordSignInMixin, AuthenticationForm):
    pass


class AdminSignInForm(PasswordSignInMixin, AdminAuthenticationForm):
    pass


class WebhookForm(forms.Form):
    """The endpoint's fields; their rule is billing.webhooks.validate_webhook_config, applied
    by the service (its errors land on these fields)."""

    url = forms.CharField(
        label="Endpoint URL", max_length=2000,
        help_text="An https URL of your receiver; we POST signed JSON events to it.",
    )  # fmt: skip
    event_types = forms.MultipleChoiceField(
        label="Events", required=False, widget=forms.CheckboxSelectMultiple,
        choices=[(name, name) for name in WEBHOOK_EVENT_TYPES],
        help_text="None chosen: every event. webhook.test is always sent when you ask for it.",
    )  # fmt: skip


class AlertThresholdsForm(forms.Form):
    thresholds = forms.CharField(
        label="Alert at", max_length=100,
        help_text="Percentages of the monthly budget, e.g. 50, 80, 100. Owners are emailed "
        "(and your webhook gets budget.threshold_reached) once a month at each.",
    )  # fmt: skip

    def clean_thresholds(self) -> list[int]:
        parts = [part.strip().rstrip("%") for part in self.cleaned_data["thresholds"].split(",")]
        try:
            values = [int(part) for part in parts if part]
        except ValueError:
            raise forms.ValidationError("Write whole percentages, e.g. 50, 80, 100.") from None
        try:
            return validate_thresholds(values)
        except ValidationError as error:
            raise forms.ValidationError(error.message_dict["thresholds"]) from None
