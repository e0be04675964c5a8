"""Prepaid credits: grants, draw-downs of usage, lapses, on the append-only credit ledger
(`CreditEntry`), and the two running counters admission reads (billing.spend).

A tenant's balance is its grants less what was drawn from them and what lapsed. Usage is drawn
when the ledger stores it (`credits_draw`, in the same transaction, so a retried batch, which
stores nothing new, draws nothing), from the tenant's open grants oldest-expiring first, and
never more than is left: usage beyond the balance stays billable on the invoice. What is left
of a grant when it expires lapses (`credits_lapse_expired`).

Every write that changes a tenant's credits holds its tenant row lock (`_lock_tenants`), so
two writers never draw the same credit twice, and sets `credit:granted` from the ledger while
it holds it. `credit:used` is added to by the gateway when it settles a request, ahead of the
ledger, so it is only ever raised from the draw-downs here.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import DecimalField, Exists, Max, Min, OuterRef, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncMonth
from django.utils import timezone

from audit.services import audit_record
from billing import money, spend
from billing.models import CreditEntry, UsageRecord
from tenants.models import Tenant

Kind = CreditEntry.Kind
GRANT_MAX = Decimal(10) ** 12  # a grant below a trillion of the currency
_NEVER = datetime.max.replace(tzinfo=UTC)
_ZERO = Value(Decimal(0), output_field=DecimalField(max_digits=24, decimal_places=12))


@dataclass(frozen=True)
class Balance:
    """A tenant's credits: everything granted, drawn down by usage and lapsed, all time."""

    granted: Decimal
    drawn: Decimal
    lapsed: Decimal
    currency: str

    @property
    def balance(self) -> Decimal:
        """What is left to spend: never negative (draw-downs never take more than is left)."""
        return max(Decimal(0), self.granted - self.drawn - self.lapsed)


def _amount_error(amount) -> str | None:
    if isinstance(amount, bool | float):
        return "Amount must be a decimal amount."
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    except InvalidOperation:
        return "Amount must be a decimal amount."
    if not value.is_finite():
        return "Amount must be a decimal amount."
    if value <= 0:
        return "Amount must be more than 0."
    places = money.MINOR_UNITS.get(settings.BILLING_CURRENCY.upper(), 2)
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        return f"Amount can have at most {places} decimal places."
    if value >= GRANT_MAX:
        return "Amount is too large."
    return None


def expiry_moment(expires: date | datetime | None) -> datetime | None:
    """When credits given until `expires` lapse: a date is valid through that day (UTC), so
    they lapse at the next midnight; a datetime is taken as it is (it must be aware)."""
    if expires is None or isinstance(expires, datetime):
        return expires
    return datetime.combine(expires + timedelta(days=1), time(0), tzinfo=UTC)


def validate_credit_grant(*, amount, reason, expires=None) -> None:
    """The one validation of a grant (CLI, admin): raise ValidationError naming each bad field."""
    errors: dict[str, str] = {}
    message = _amount_error(amount)
    if message:
        errors["amount"] = message
    if not isinstance(reason, str) or not reason.strip():
        errors["reason"] = "A grant needs a reason."
    elif len(reason.strip()) > 500:
        errors["reason"] = "The reason is longer than 500 characters."
    if isinstance(expires, datetime) and timezone.is_naive(expires):
        errors["expires"] = "The expiry needs a time zone."
    elif expires is not None and not isinstance(expires, date):
        errors["expires"] = "The expiry must be a date (YYYY-MM-DD)."
    elif expires is not None and expiry_moment(expires) <= timezone.now():
        errors["expires"] = "The expiry is in the past."
    if errors:
        raise ValidationError(errors)


def _lock_tenants(tenant_ids) -> None:
    # The per-tenant lock every credit write holds: the tenant rows, in id order so that two
    # writers locking several tenants wait for each other instead of deadlocking. NO KEY: the
    # ledger's batch has just inserted rows referring to the tenant, which holds a KEY SHARE
    # lock on it, and two batches would each wait for the other's under a plain FOR UPDATE.
    locked = Tenant.objects.select_for_update(no_key=True).filter(pk__in=set(tenant_ids))
    list(locked.order_by("pk").values_list("pk", flat=True))


def _sums(tenant_id: int) -> dict[str, Decimal]:
    rows = (
        CreditEntry.objects.filter(tenant_id=tenant_id)
        .values("kind")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    sums = {kind: Decimal(0) for kind in Kind.values}
    sums.update({row["kind"]: row["total"] for row in rows})
    return sums


def latest_grant(tenant: Tenant) -> CreditEntry | None:
    return CreditEntry.objects.filter(tenant=tenant, kind=Kind.GRANT).order_by("-pk").first()


def credits_balance(tenant: Tenant) -> Balance:
    """The tenant's credits as the ledger has them (drawn: the usage stored so far)."""
    sums = _sums(tenant.pk)
    return Balance(
        granted=sums[Kind.GRANT],
        drawn=sums[Kind.DRAW],
        lapsed=sums[Kind.LAPSE],
        currency=settings.BILLING_CURRENCY,
    )


def _sync_counters(tenant_id: int) -> None:
    """Set `credit:granted` and raise `credit:used` to what the ledger says. Called holding the
    tenant's lock, inside the transaction that wrote its credit rows."""
    sums = _sums(tenant_id)
    spend.counter_set(
        spend.credit_granted_key(tenant_id), money.to_picos(sums[Kind.GRANT] - sums[Kind.LAPSE])
    )
    spend.counter_raise(spend.credit_used_key(tenant_id), money.to_picos(sums[Kind.DRAW]))


def _open_grants(tenant_id: int, *, usable_at: datetime | None = None) -> list[CreditEntry]:
    """The tenant's grants not lapsed yet, with `left` (what is left of each), oldest-expiring
    first (grants that never expire last), then oldest granted."""
    lapse = CreditEntry.objects.filter(grant=OuterRef("pk"), kind=Kind.LAPSE)
    grants = (
        CreditEntry.objects.filter(tenant_id=tenant_id, kind=Kind.GRANT)
        .filter(~Exists(lapse))
        .annotate(used=Coalesce(Sum("uses__amount"), _ZERO))
        .order_by()
    )
    if usable_at is not None:
        grants = grants.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=usable_at))
    found = sorted(grants, key=lambda g: (g.expires_at or _NEVER, g.pk))
    for grant in found:
        grant.left = grant.amount - grant.used
    return found


@transaction.atomic
def credits_grant(*, tenant: Tenant, amount, reason: str, expires=None, actor: str = ""):
    """Grant the tenant prepaid credits (in BILLING_CURRENCY), valid until `expires` (a date:
    through that day, UTC; None: no expiry). Returns the grant's ledger row."""
    validate_credit_grant(amount=amount, reason=reason, expires=expires)
    _lock_tenants([tenant.pk])
    grant = CreditEntry.objects.create(
        tenant=tenant,
        kind=Kind.GRANT,
        amount=Decimal(str(amount)),
        reason=reason.strip(),
        expires_at=expiry_moment(expires),
        actor=actor[:150],
    )
    _sync_counters(tenant.pk)
    audit_record(
        action="credits.granted",
        obj=grant,
        tenant=tenant,
        changes={
            "amount": (None, grant.amount),
            "reason": (None, grant.reason),
            "expires_at": (None, grant.expires_at),
        },
    )
    return grant


def credits_draw(*, request_ids, tenant_ids) -> Decimal:
    """Draw the usage rows just stored (their request ids; `tenant_ids` their tenants) from
    their tenants' open grants.
    Called by the ledger inside the transaction that inserted those rows; only rows priced in
    BILLING_CURRENCY are drawn. Returns the total drawn."""
    if not request_ids:
        return Decimal(0)
    rows = UsageRecord.objects.filter(request_id__in=request_ids)
    lapse = CreditEntry.objects.filter(grant=OuterRef("pk"), kind=Kind.LAPSE)
    with_credits = set(
        CreditEntry.objects.filter(tenant_id__in=tenant_ids, kind=Kind.GRANT)
        .filter(~Exists(lapse))
        .values_list("tenant_id", flat=True)
        .distinct()
        .order_by()
    )
    if not with_credits:
        return Decimal(0)
    _lock_tenants(with_credits)
    usage = (
        rows.filter(tenant_id__in=with_credits, currency=settings.BILLING_CURRENCY)
        .annotate(month=TruncMonth("occurred_at", tzinfo=UTC))
        .values("tenant_id", "month")
        .annotate(total=Sum("amount"), top=Max("id"), first=Min("occurred_at"))
        .order_by("tenant_id", "month")
    )
    by_tenant: dict[int, list[dict]] = {}
    for row in usage:
        by_tenant.setdefault(row["tenant_id"], []).append(row)
    drawn = Decimal(0)
    for tenant_id, months in by_tenant.items():
        entries = _draws(tenant_id, months)
        CreditEntry.objects.bulk_create(entries)
        drawn += sum((entry.amount for entry in entries), Decimal(0))
        _sync_counters(tenant_id)
    return drawn


def _draws(tenant_id: int, months: list[dict]) -> list[CreditEntry]:
    """The draw-down rows for one tenant's stored usage, a month at a time: from each grant
    still valid when the usage began, oldest-expiring first, at most what is left of it."""
    grants = _open_grants(tenant_id, usable_at=min(row["first"] for row in months))
    entries = []
    for row in months:
        period = row["month"].date() if isinstance(row["month"], datetime) else row["month"]
        owed = row["total"]
        for grant in grants:
            if owed <= 0:
                break
            take = min(owed, grant.left)
            if take <= 0:
                continue
            grant.left -= take
            owed -= take
            entries.append(
                CreditEntry(
                    tenant_id=tenant_id,
                    kind=Kind.DRAW,
                    amount=take,
                    grant=grant,
                    period=period,
                    usage_through_id=row["top"],
                )
            )
    return entries


def credits_lapse_expired(*, now: datetime | None = None) -> int:
    """Lapse what is left of every grant expired by `now` (default now): one lapse row per
    grant, even of nothing, so it is closed. Celery beat runs this hourly. Returns the grants
    lapsed."""
    now = now or timezone.now()
    lapse = CreditEntry.objects.filter(grant=OuterRef("pk"), kind=Kind.LAPSE)
    expired = (
        CreditEntry.objects.filter(kind=Kind.GRANT, expires_at__lte=now)
        .filter(~Exists(lapse))
        .values_list("tenant_id", flat=True)
        .distinct()
        .order_by()
    )
    count = 0
    for tenant_id in sorted(set(expired)):
        count += _lapse_tenant(tenant_id, now)
    return count


@transaction.atomic
def _lapse_tenant(tenant_id: int, now: datetime) -> int:
    _lock_tenants([tenant_id])
    lapses = [
        CreditEntry(
            tenant_id=tenant_id,
            kind=Kind.LAPSE,
            amount=max(Decimal(0), grant.left),
            grant=grant,
            reason="expired",
        )
        for grant in _open_grants(tenant_id)
        if grant.expires_at is not None and grant.expires_at <= now
    ]
    CreditEntry.objects.bulk_create(lapses)
    _sync_counters(tenant_id)
    return len(lapses)


def credits_reconcile(*, tenant_ids=None) -> int:
    """Set the credit counters of every tenant with credits (or of `tenant_ids`) from the
    ledger: beat runs it every few minutes, which heals a Redis that lost its data. A process
    whose counters are its own memory (the embedded default) calls it for a tenant it loads,
    since a grant made by another process (`credits grant`) set only that process's counters.
    Returns the tenants reconciled."""
    entries = CreditEntry.objects.all()
    if tenant_ids is not None:
        entries = entries.filter(tenant_id__in=set(tenant_ids))
    tenant_ids = sorted(set(entries.values_list("tenant_id", flat=True).distinct().order_by()))
    for tenant_id in tenant_ids:
        with transaction.atomic():
            _lock_tenants([tenant_id])
            _sync_counters(tenant_id)
    return len(tenant_ids)


def credits_applied(tenant, period: date, after_id: int, through_id: int) -> Decimal:
    """The draw-downs of the usage an invoice carries (billing.invoices): the month's usage
    stored up to ledger row `through_id`, and earlier months' stored after `after_id`. A batch's
    rows and its draw-downs are committed together, so the ids split them the same way."""
    draws = CreditEntry.objects.filter(
        tenant=tenant, kind=Kind.DRAW, usage_through_id__lte=through_id
    )
    draws = draws.filter(Q(period=period) | Q(period__lt=period, usage_through_id__gt=after_id))
    return draws.aggregate(total=Sum("amount"))["total"] or Decimal(0)


def credit_entries(tenant: Tenant):
    """The tenant's credit ledger, newest first, each draw-down and lapse with its grant."""
    return CreditEntry.objects.filter(tenant=tenant).select_related("grant").order_by("-id")
