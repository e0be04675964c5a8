from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from saas_platform.text import validate_display_name
from tenants.apikeys import KEY_PREFIX, PREFIX_LENGTH
from tenants.quotas import (
    BUDGET_DECIMAL_PLACES,
    BUDGET_MAX_DIGITS,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_TOKENS_PER_MINUTE,
    DEFAULT_QUEUE_WEIGHT,
    KeyLimits,
    TenantConfig,
    validate_key_limits,
    validate_tenant_config,
)


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(
        "display name", max_length=200, blank=True, validators=[validate_display_name]
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    max_concurrent_requests = models.PositiveIntegerField(default=DEFAULT_MAX_CONCURRENT_REQUESTS)
    max_tokens_per_minute = models.PositiveBigIntegerField(default=DEFAULT_MAX_TOKENS_PER_MINUTE)
    max_requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: no limit on requests per minute."
    )
    model_allow_list = models.JSONField(
        default=list, blank=True, help_text="Model ids this tenant may use; empty allows all."
    )
    monthly_budget = models.DecimalField(
        max_digits=BUDGET_MAX_DIGITS,
        decimal_places=BUDGET_DECIMAL_PLACES,
        null=True,
        blank=True,
        help_text="In the operator's currency; empty: no budget.",
    )
    prepaid = models.BooleanField(
        default=False, help_text="Admit requests only while prepaid credits cover them."
    )
    sso_required = models.BooleanField(
        "SSO required",
        default=False,
        help_text="Members sign in through the identity provider only: no password sign-in and "
        "no password reset.",
    )
    queue_weight = models.PositiveIntegerField(
        "weight",
        default=DEFAULT_QUEUE_WEIGHT,
        help_text="Share of a saturated model's engines against other waiting tenants.",
    )
    max_queued_requests = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests that may wait for a saturated model at once; empty: the "
        "concurrency limit.",
    )

    class Meta:
        ordering = ["slug"]
        constraints = [
            # Backstops for validate_tenant_config, so no write path can store a broken limit.
            models.CheckConstraint(
                condition=Q(max_concurrent_requests__gte=1), name="tenant_concurrency_positive"
            ),
            models.CheckConstraint(
                condition=Q(max_tokens_per_minute__gte=1), name="tenant_tpm_positive"
            ),
            models.CheckConstraint(
                condition=Q(max_requests_per_minute__isnull=True)
                | Q(max_requests_per_minute__gte=1),
                name="tenant_rpm_positive",
            ),
            models.CheckConstraint(
                condition=Q(monthly_budget__isnull=True) | Q(monthly_budget__gte=0),
                name="tenant_budget_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(queue_weight__gte=1), name="tenant_queue_weight_positive"
            ),
            models.CheckConstraint(
                condition=Q(max_queued_requests__isnull=True) | Q(max_queued_requests__gte=1),
                name="tenant_max_queued_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def config(self) -> TenantConfig:
        return TenantConfig(
            max_concurrent_requests=self.max_concurrent_requests,
            max_tokens_per_minute=self.max_tokens_per_minute,
            max_requests_per_minute=self.max_requests_per_minute,
            model_allow_list=list(self.model_allow_list or []),
            monthly_budget=self.monthly_budget,
            prepaid=self.prepaid,
            sso_required=self.sso_required,
            queue_weight=self.queue_weight,
            max_queued_requests=self.max_queued_requests,
        )

    def clean(self) -> None:
        validate_tenant_config(self.config)


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class InvitationQuerySet(models.QuerySet):
    def open_at(self, moment: datetime) -> "InvitationQuerySet":
        """Not accepted and not expired at `moment`."""
        issued_after = moment - timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT)
        return self.filter(accepted_at__isnull=True, created_at__gt=issued_after)


class Invitation(models.Model):
    """An owner's offer of a membership to an email address. Nothing changes until the person
    at that address follows the emailed link and accepts, signed in with an account of that
    address (or making one); it works once, for PASSWORD_RESET_TIMEOUT. Only the link's SHA-256
    is kept."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(
        max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER
    )
    digest = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    accepted_at = models.DateTimeField(null=True, blank=True, editable=False)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} to {self.tenant} ({self.role})"

    @property
    def expires_at(self) -> datetime:
        return self.created_at + timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT)

    def is_open_at(self, moment: datetime) -> bool:
        return self.accepted_at is None and moment < self.expires_at


class ApiKeyQuerySet(models.QuerySet):
    def for_digest(self, digest: str) -> "ApiKey | None":
        return self.select_related("tenant").filter(digest=digest).first()


class ApiKey(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"

    class Scope(models.TextChoices):
        # Calls /v1/ (inference) and the billing API; cannot manage keys.
        INFERENCE = "inference", "Inference"
        # Manages the tenant's keys (/api/keys); refused on /v1/.
        MANAGE = "manage", "Manage keys"

    class Priority(models.TextChoices):
        # The order among one tenant's requests waiting for a saturated model's engines.
        HIGH = "high", "High"
        NORMAL = "normal", "Normal"
        LOW = "low", "Low"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True, validators=[validate_display_name])
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.INFERENCE)
    prefix = models.CharField(max_length=PREFIX_LENGTH, unique=True, editable=False)
    # SHA-256 of the whole key; the key itself is never stored.
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    replaced_by = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        editable=False,
        related_name="replaces",
        help_text="The key issued when this one was rotated.",
    )

    # The key's own limits (KeyLimits), each narrowing its tenant's; empty: the tenant's apply.
    max_concurrent_requests = models.PositiveIntegerField(null=True, blank=True)
    max_tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)
    max_requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    monthly_budget = models.DecimalField(
        max_digits=BUDGET_MAX_DIGITS,
        decimal_places=BUDGET_DECIMAL_PLACES,
        null=True,
        blank=True,
        help_text="In the operator's currency; empty: the tenant's budget only.",
    )
    model_allow_list = models.JSONField(
        default=list, blank=True, help_text="Model ids this key may use; empty: the tenant's."
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        constraints = [
            # Backstops for validate_key_limits.
            models.CheckConstraint(
                condition=Q(max_concurrent_requests__isnull=True)
                | Q(max_concurrent_requests__gte=1),
                name="apikey_concurrency_positive",
            ),
            models.CheckConstraint(
                condition=Q(max_tokens_per_minute__isnull=True) | Q(max_tokens_per_minute__gte=1),
                name="apikey_tpm_positive",
            ),
            models.CheckConstraint(
                condition=Q(max_requests_per_minute__isnull=True)
                | Q(max_requests_per_minute__gte=1),
                name="apikey_rpm_positive",
            ),
            models.CheckConstraint(
                condition=Q(monthly_budget__isnull=True) | Q(monthly_budget__gte=0),
                name="apikey_budget_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.display_prefix

    @property
    def display_prefix(self) -> str:
        return KEY_PREFIX + self.prefix

    def state_at(self, moment: datetime) -> str:
        if self.revoked_at is not None:
            return self.State.REVOKED
        if self.expires_at is not None and self.expires_at <= moment:
            return self.State.EXPIRED
        return self.State.ACTIVE

    @property
    def state(self) -> str:
        return self.state_at(timezone.now())

    @property
    def limits(self) -> KeyLimits:
        return KeyLimits(
            max_concurrent_requests=self.max_concurrent_requests,
            max_tokens_per_minute=self.max_tokens_per_minute,
            max_requests_per_minute=self.max_requests_per_minute,
            monthly_budget=self.monthly_budget,
            model_allow_list=list(self.model_allow_list or []),
        )

    def clean(self) -> None:
        validate_key_limits(self.limits, self.tenant.config)
