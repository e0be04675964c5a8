"""The billing data: prices, the usage ledger, daily rollups, invoices and credit notes.

Money is Decimal end to end. Ledger amounts keep full precision (12 decimal places); amounts
are rounded once, per invoice line, to the currency's minor unit (see billing.money).
"""

from django.db import models
from django.utils import timezone

from saas_platform.model_ids import MODEL_ID_MAX_LENGTH
from tenants.models import Tenant


class Price(models.Model):
    """A model's price from `effective_from` on; a tenant's own price overrides the list price.
    Rows are never edited: a change is a new row with a later `effective_from`."""

    model_id = models.CharField(max_length=MODEL_ID_MAX_LENGTH)
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="prices",
        help_text="Empty: the list price for every tenant without its own.",
    )  # fmt: skip
    currency = models.CharField(max_length=3)
    input_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    output_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    cached_input_per_million = models.DecimalField(
        max_digits=18, decimal_places=6, null=True, blank=True,
        help_text="Input tokens the engine served from its prompt cache. Empty: the input price.",
    )  # fmt: skip
    effective_from = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["model_id", "tenant_id", "-effective_from"]
        indexes = [models.Index(fields=["model_id", "effective_from"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(input_per_million__gte=0, output_per_million__gte=0),
                name="price_not_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(cached_input_per_million__isnull=True)
                | models.Q(cached_input_per_million__gte=0),
                name="price_cached_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} {self.input_per_million}/{self.output_per_million} {self.currency}"

    @property
    def cached_price(self):
        """The price per million cached input tokens: its own, else the input price."""
        if self.cached_input_per_million is None:
            return self.input_per_million
        return self.cached_input_per_million


class UsageRecord(models.Model):
    """The ledger: one row per admitted request, append-only and narrow (no JSON per row).
    `request_id` is the idempotency key; `id` orders rows by when they were stored, which is
    what invoices use to tell late events (docs/ledger.md)."""

    request_id = models.CharField(max_length=64, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, db_index=False)
    api_key_prefix = models.CharField(max_length=16)
    model_id = models.CharField(max_length=MODEL_ID_MAX_LENGTH)
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField()
    # Of the prompt tokens, those the engine served from its prompt cache (priced apart).
    # db_default: rows inserted by raw SQL that predates the column (bench/ledger.py) get 0 too.
    cached_tokens = models.PositiveIntegerField(db_default=0)
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField(default=timezone.now)
    latency_ms = models.PositiveIntegerField()
    status = models.PositiveSmallIntegerField()
    counted = models.BooleanField(help_text="Tokens counted by the gateway, not the engine.")
    price = models.ForeignKey(Price, null=True, on_delete=models.PROTECT, db_index=False)
    amount = models.DecimalField(max_digits=24, decimal_places=12)
    currency = models.CharField(max_length=3)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "occurred_at"], name="usage_tenant_time"),
            models.Index(fields=["occurred_at"], name="usage_time"),
        ]

    def __str__(self) -> str:
        return self.request_id

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class DailyUsage(models.Model):
    """Per tenant, model and UTC day: recomputed from the ledger for every touched day, never
    incremented, so a retried batch can never count twice."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="daily_usage")
    model_id = models.CharField(max_length=MODEL_ID_MAX_LENGTH)
    day = models.DateField()
    requests = models.PositiveIntegerField()
    prompt_tokens = models.PositiveBigIntegerField()
    completion_tokens = models.PositiveBigIntegerField()
    cached_tokens = models.PositiveBigIntegerField(db_default=0)
    amount = models.DecimalField(max_digits=24, decimal_places=12)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "model_id", "day"], name="daily_unique")
        ]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.model_id} {self.day}"


class Invoice(models.Model):
    """A tenant's invoice for a calendar month. Only finalized invoices are stored; a draft is
    computed from the ledger when asked for. Finalized rows cannot be updated or deleted: the
    database refuses (a trigger), so neither the ORM nor the admin can change one."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        FINAL = "final", "Final"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    period = models.DateField(help_text="The first day of the invoiced month.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.FINAL)
    number = models.CharField(max_length=32, unique=True)
    currency = models.CharField(max_length=3)
    total = models.DecimalField(max_digits=18, decimal_places=2)
    # The ledger rows up to this id (and no later ones) are on this or an earlier invoice.
    covers_through_id = models.BigIntegerField()
    finalized_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-period", "tenant_id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period"], name="invoice_one_per_month")
        ]

    def __str__(self) -> str:
        return self.number

    @property
    def is_final(self) -> bool:
        return self.status == self.Status.FINAL


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        CACHED = "cached", "Cached input"
        ADJUSTMENT = "adjustment", "Late usage from earlier periods"
        LATE_CACHED = "late_cached", "Late cached input from earlier periods"

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    model_id = models.CharField(max_length=MODEL_ID_MAX_LENGTH)
    requests = models.PositiveIntegerField()
    input_tokens = models.PositiveBigIntegerField()
    output_tokens = models.PositiveBigIntegerField()
    input_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    output_per_million = models.DecimalField(max_digits=18, decimal_places=6)
    amount = models.DecimalField(max_digits=18, decimal_places=2)

    class Meta:
        ordering = ["invoice_id", "kind", "model_id", "id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.model_id} {self.amount}"


class InvoiceCloseFailure(models.Model):
    """A tenant whose month could not be closed: shown on the admin's close page, retried by
    the next close, and deleted when its invoice is finalized."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="close_failures")
    period = models.DateField()
    error = models.CharField(max_length=500)
    attempts = models.PositiveIntegerField(default=1)
    first_failed_at = models.DateTimeField(default=timezone.now)
    last_failed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["period", "tenant_id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period"], name="close_failure_unique")
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.period:%Y-%m}: {self.error}"


class InvoiceCounter(models.Model):
    """The last invoice (or credit note) number given out in a year, per series: numbers are
    taken under a row lock in the finalizing transaction, so there are never gaps."""

    series = models.CharField(max_length=8)
    year = models.PositiveIntegerField()
    last = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["series", "year"], name="counter_unique")]

    def __str__(self) -> str:
        return f"{self.series}-{self.year}: {self.last}"


class CreditNote(models.Model):
    """A correction of a finalized invoice: invoices are never edited."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=32, unique=True)
    amount = models.DecimalField(max_digits=18, decimal_places=2)
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="credit_positive")
        ]

    def __str__(self) -> str:
        return self.number


class CreditEntry(models.Model):
    """The credit ledger, append-only (the database refuses updates and deletes): grants of
    prepaid credit, draw-downs of usage from a grant, and lapses of what was left of an expired
    grant. A tenant's balance is its grants less its draw-downs and lapses (billing.credits)."""

    class Kind(models.TextChoices):
        GRANT = "grant", "Grant"
        DRAW = "draw", "Draw-down"
        LAPSE = "lapse", "Lapse"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="credit_entries")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    amount = models.DecimalField(max_digits=24, decimal_places=12)
    grant = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="uses",
        help_text="The grant a draw-down or lapse takes from.",
    )  # fmt: skip
    reason = models.CharField(max_length=500, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="A grant's expiry.")
    actor = models.CharField(max_length=150, blank=True, help_text="Who made a grant.")
    # A draw-down's usage: its month, and the highest ledger row id it pays for, so an invoice
    # applies exactly the draw-downs of the usage rows it carries (billing.invoices).
    period = models.DateField(null=True, blank=True)
    usage_through_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["tenant_id", "id"]
        verbose_name = "credit ledger entry"
        verbose_name_plural = "credit ledger"
        indexes = [models.Index(fields=["tenant", "kind"], name="credit_tenant_kind")]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gte=0), name="credit_not_negative"),
            models.CheckConstraint(
                condition=models.Q(kind="grant", grant__isnull=True, amount__gt=0)
                | (~models.Q(kind="grant") & models.Q(grant__isnull=False)),
                name="credit_grant_shape",
            ),
            models.UniqueConstraint(
                fields=["grant"], condition=models.Q(kind="lapse"), name="credit_lapses_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.kind} {self.amount}"


class SpendAlert(models.Model):
    """A threshold a tenant's spend reached, once: the unique constraint is what makes each
    threshold fire once per scope and period however often the ledger re-checks (a retried
    batch, a restarted worker). `scope` says what was measured: the tenant's monthly budget
    today; a key's budget (`scope_ref` its prefix) or a prepaid balance (`period` then the
    crossing) fit the same row."""

    class Scope(models.TextChoices):
        TENANT_BUDGET = "tenant_budget", "Tenant monthly budget"
        KEY_BUDGET = "key_budget", "API key monthly budget"
        CREDIT_BALANCE = "credit_balance", "Prepaid credit balance"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="spend_alerts")
    scope = models.CharField(max_length=16, choices=Scope.choices)
    scope_ref = models.CharField(max_length=32, blank=True)
    period = models.DateField(help_text="The first day of the month the threshold is for.")
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the budget.")
    spend = models.DecimalField(max_digits=24, decimal_places=12)
    budget = models.DecimalField(max_digits=18, decimal_places=6)
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(default=timezone.now)
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "scope", "scope_ref", "period", "threshold"],
                name="spend_alert_once",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.scope} {self.period:%Y-%m} {self.threshold}%"


class SpendAlertRule(models.Model):
    """A tenant's own thresholds for one scope (percentages; validated by
    billing.alerts.validate_thresholds); without a rule, SPEND_ALERT_THRESHOLDS apply."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alert_rules")
    scope = models.CharField(max_length=16, choices=SpendAlert.Scope.choices)
    scope_ref = models.CharField(max_length=32, blank=True)
    thresholds = models.JSONField(help_text="Percentages of the budget, e.g. [50, 80, 100].")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "scope", "scope_ref"], name="spend_alert_rule_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.scope} {self.thresholds}"


class WebhookEndpoint(models.Model):
    """The tenant's own receiver of events. The secret signs every delivery; after a roll the
    previous one signs alongside it until `previous_secret_expires_at`, so a receiver can switch
    without missing a delivery."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="webhook")
    url = models.CharField(max_length=2000)
    event_types = models.JSONField(default=list, help_text="Empty: every event type.")
    secret = models.CharField(max_length=80, editable=False)
    previous_secret = models.CharField(max_length=80, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.url}"

    def wants(self, event_type: str) -> bool:
        # A test event goes to every enabled endpoint: it is what checks the endpoint.
        chosen = not self.event_types or event_type in self.event_types
        return self.enabled and (chosen or event_type == "webhook.test")


class WebhookDelivery(models.Model):
    """One event for one endpoint, with its body fixed when it is made: every attempt sends the
    same bytes under the same `event_id`, which is what the receiver deduplicates on."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_id = models.CharField(max_length=40, unique=True)
    event_type = models.CharField(max_length=40)
    # Once per key: an event that must not be sent twice (a key's expiry notice).
    dedup_key = models.CharField(max_length=120, null=True, blank=True, unique=True)
    body = models.TextField()
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="webhook_due")]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    attempted_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    response_head = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["attempted_at", "id"]

    def __str__(self) -> str:
        return f"{self.delivery_id} {self.status_code or self.error}"

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
