"""Spend alerts: decided by the ledger after a batch is stored, never on the request path.

Each rule in SCOPES measures one "scope" of a tenant's spend against its limit (`Measure`);
the tenant's monthly budget, and each key's own budget (`scope_ref` the key's prefix). A
prepaid balance would be one more, whose
`period` names the crossing (the balance's top-up), so it fires once per crossing. The
thresholds are the tenant's own for that scope and ref (`SpendAlertRule`), else
SPEND_ALERT_THRESHOLDS. `alerts_check` does the rest alike for every scope: a threshold reached
makes one `SpendAlert` row, whose unique constraint makes it once per scope, period and
threshold however often a batch is re-checked (a retried drain, a restarted worker, two drains
at once); the row, its webhook event and its email go together.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Sum
from django.db.models.functions import TruncMonth
from django.template.loader import render_to_string
from django.utils import timezone

from audit.services import audit_record
from billing import credits, money
from billing.invoices import next_month
from billing.models import DailyUsage, SpendAlert, SpendAlertRule, UsageRecord
from billing.webhook_delivery import owners_email
from billing.webhooks import webhook_event_emit
from tenants.apikeys import KEY_PREFIX
from tenants.models import ApiKey, Tenant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measure:
    tenant: Tenant
    scope: str
    scope_ref: str
    period: date
    spend: Decimal
    limit: Decimal
    currency: str


def tenant_budget_measures(pairs: set[tuple[int, date]]) -> list[Measure]:
    """Each tenant's spend in a month against its monthly budget (tenants with one): two
    queries for the whole batch, budgets read fresh."""
    tenants = {
        tenant.pk: tenant
        for tenant in Tenant.objects.filter(
            pk__in={tenant_id for tenant_id, _period in pairs}, monthly_budget__gt=0
        )
    }
    pairs = {(tenant_id, period) for tenant_id, period in pairs if tenant_id in tenants}
    if not pairs:
        return []
    periods = {period for _tenant_id, period in pairs}
    sums = (
        DailyUsage.objects.filter(
            tenant_id__in=tenants, day__gte=min(periods), day__lt=next_month(max(periods))
        )
        .annotate(month=TruncMonth("day"))
        .values("tenant_id", "month")
        .annotate(total=Sum("amount"))
    )
    spent = {(row["tenant_id"], row["month"]): row["total"] for row in sums}
    return [
        Measure(
            tenant=tenants[tenant_id],
            scope=SpendAlert.Scope.TENANT_BUDGET,
            scope_ref="",
            period=period,
            spend=spent.get((tenant_id, period)) or Decimal(0),
            limit=tenants[tenant_id].monthly_budget,
            currency=settings.BILLING_CURRENCY,
        )
        for tenant_id, period in sorted(pairs)
    ]


def key_budget_measures(pairs: set[tuple[int, date]]) -> list[Measure]:
    """Each key with a budget of its own: its spend in a month (from the ledger, on the tenant
    and time index: the rollups are not kept per key) against that budget."""
    tenant_ids = {tenant_id for tenant_id, _period in pairs}
    keys = {
        KEY_PREFIX + key.prefix: key
        for key in ApiKey.objects.filter(
            tenant_id__in=tenant_ids, monthly_budget__gt=0
        ).select_related("tenant")
    }
    if not keys:
        return []
    periods = {period for _tenant_id, period in pairs}
    sums = (
        UsageRecord.objects.filter(
            tenant_id__in={key.tenant_id for key in keys.values()},
            occurred_at__gte=month_bounds(min(periods))[0],
            occurred_at__lt=month_bounds(max(periods))[1],
            api_key_prefix__in=keys,
        )
        .annotate(month=TruncMonth("occurred_at"))
        .values("api_key_prefix", "month")
        .annotate(total=Sum("amount"))
    )
    measures = []
    for row in sums:
        key, period = keys[row["api_key_prefix"]], row["month"].date()
        if (key.tenant_id, period) in pairs:
            measures.append(Measure(
                tenant=key.tenant, scope=SpendAlert.Scope.KEY_BUDGET,
                scope_ref=row["api_key_prefix"], period=period, spend=row["total"],
                limit=key.monthly_budget, currency=settings.BILLING_CURRENCY,
            ))  # fmt: skip
    return measures


def month_bounds(period: date) -> tuple[datetime, datetime]:
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    end = next_month(period)
    return start, datetime(end.year, end.month, 1, tzinfo=UTC)


# Every scope's rule; each returns the Measures for the (tenant, month) pairs a batch touched.
SCOPES = (tenant_budget_measures, key_budget_measures)


MAX_THRESHOLDS = 10
MAX_PERCENT = 1000


def validate_thresholds(values) -> list[int]:
    """The one rule for a tenant's thresholds (the admin, the portal and the service): 1 to
    MAX_THRESHOLDS whole percentages from 1 to MAX_PERCENT. Returns them sorted, once each."""
    message = (
        f"Thresholds must be 1 to {MAX_THRESHOLDS} whole percentages from 1 to {MAX_PERCENT}, "
        "e.g. 50, 80, 100."
    )
    if not isinstance(values, list | tuple) or not 1 <= len(values) <= MAX_THRESHOLDS:
        raise ValidationError({"thresholds": message}, code="invalid_thresholds")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError({"thresholds": message}, code="invalid_thresholds")
        if not 1 <= value <= MAX_PERCENT:
            raise ValidationError({"thresholds": message}, code="invalid_thresholds")
    return sorted(set(values))


@transaction.atomic
def alert_thresholds_set(
    *, tenant, thresholds: list[int] | None, scope: str = SpendAlert.Scope.TENANT_BUDGET,
    scope_ref: str = "",
) -> None:  # fmt: skip
    """Set the tenant's thresholds for a scope; None goes back to SPEND_ALERT_THRESHOLDS."""
    rules = SpendAlertRule.objects.filter(tenant=tenant, scope=scope, scope_ref=scope_ref)
    existing = rules.first()
    before = list(existing.thresholds) if existing else None
    if thresholds is None:
        rules.delete()
        after = None
    else:
        after = validate_thresholds(thresholds)
        SpendAlertRule.objects.update_or_create(
            tenant=tenant, scope=scope, scope_ref=scope_ref, defaults={"thresholds": after},
        )  # fmt: skip
    if before != after:
        audit_record(
            action="alerts.thresholds_changed",
            obj=tenant,
            changes={
                "thresholds": (before, after),
                "scope": (None, f"{scope} {scope_ref}".strip()),
            },
        )


def alert_thresholds_for(tenant, scope: str = SpendAlert.Scope.TENANT_BUDGET) -> list[int]:
    rule = SpendAlertRule.objects.filter(tenant=tenant, scope=scope, scope_ref="").first()
    return list(rule.thresholds) if rule else list(settings.SPEND_ALERT_THRESHOLDS)


def _reached(measure: Measure, thresholds: list[int]) -> list[int]:
    return [t for t in thresholds if measure.spend * 100 >= measure.limit * t]


def alerts_check(pairs: Iterable[tuple[int, date]]) -> list[SpendAlert]:
    """Fire the thresholds reached for these (tenant, month) pairs and not fired yet, and the
    low-balance alerts of their prepaid tenants; return the alerts made now. Those fired
    already are read in one query, so a tenant past its budget costs a batch nothing more."""
    pairs = set(pairs)
    if not pairs:
        return []
    return _budget_alerts(pairs) + _balance_alerts({tenant_id for tenant_id, _p in pairs})


def _budget_alerts(pairs: set[tuple[int, date]]) -> list[SpendAlert]:
    measures = [measure for rule in SCOPES for measure in rule(pairs)]
    if not measures:
        return []
    rules = {
        (rule.tenant_id, rule.scope, rule.scope_ref): rule.thresholds
        for rule in SpendAlertRule.objects.filter(tenant_id__in={m.tenant.pk for m in measures})
    }
    default = sorted(settings.SPEND_ALERT_THRESHOLDS)
    reached = [
        (m, threshold)
        for m in measures
        for threshold in _reached(m, rules.get((m.tenant.pk, m.scope, m.scope_ref), default))
    ]
    if not reached:
        return []
    fired = set(
        SpendAlert.objects.filter(
            tenant_id__in={m.tenant.pk for m, _t in reached},
            period__in={m.period for m, _t in reached},
        ).values_list("tenant_id", "scope", "scope_ref", "period", "threshold")
    )
    made = []
    for measure, threshold in reached:
        key = (measure.tenant.pk, measure.scope, measure.scope_ref, measure.period, threshold)
        if key not in fired:
            alert = _fire(measure, threshold)  # None: a concurrent drain fired it first
            if alert is not None:
                made.append(alert)
    return made


def _balance_alerts(tenant_ids: set[int]) -> list[SpendAlert]:
    """A prepaid tenant whose credit balance is at or below one of CREDIT_BALANCE_ALERTS
    (amounts of the currency) gets `credits.balance_low` once per crossing: the alert names the
    latest grant (`scope_ref`), so a top-up lets each threshold fire again."""
    made = []
    for tenant in Tenant.objects.filter(pk__in=tenant_ids, prepaid=True):
        latest = credits.latest_grant(tenant)
        if latest is None:
            continue
        balance = credits.credits_balance(tenant).balance
        period = latest.created_at.astimezone(UTC).date()
        for threshold in settings.CREDIT_BALANCE_ALERTS:
            if balance <= threshold:
                alert = _fire_balance(tenant, latest, period, threshold, balance)
                if alert is not None:
                    made.append(alert)
    return made


@transaction.atomic
def _fire_balance(tenant, grant, period: date, threshold: int, balance) -> SpendAlert | None:
    currency = settings.BILLING_CURRENCY
    alert, created = SpendAlert.objects.get_or_create(
        tenant=tenant, scope=SpendAlert.Scope.CREDIT_BALANCE, scope_ref=f"grant-{grant.pk}",
        period=period,
        threshold=threshold, defaults={"spend": balance, "budget": threshold, "currency": currency},
    )  # fmt: skip
    if not created:
        return None
    data = {"threshold": str(threshold), "balance": str(money.round_line(balance, currency)),
            "currency": currency, "since": period.isoformat()}  # fmt: skip
    webhook_event_emit(tenant=tenant, event_type="credits.balance_low", data=data)
    transaction.on_commit(lambda: _enqueue_email(alert.pk))
    logger.info("credit balance alert: %s", alert)
    return alert


@transaction.atomic
def _fire(measure: Measure, threshold: int) -> SpendAlert | None:
    alert, created = SpendAlert.objects.get_or_create(
        tenant=measure.tenant, scope=measure.scope, scope_ref=measure.scope_ref,
        period=measure.period, threshold=threshold,
        defaults={"spend": measure.spend, "budget": measure.limit,
                  "currency": measure.currency},
    )  # fmt: skip
    if not created:
        return None
    data = {
        "scope": measure.scope,
        "threshold": threshold,
        "spend": str(money.round_line(measure.spend, measure.currency)),
        "budget": str(money.round_line(measure.limit, measure.currency)),
        "currency": measure.currency,
        "period": f"{measure.period:%Y-%m}",
        "key_prefix": measure.scope_ref or None,
    }
    webhook_event_emit(tenant=measure.tenant, event_type="budget.threshold_reached", data=data)
    transaction.on_commit(lambda: _enqueue_email(alert.pk))
    logger.info("spend alert: %s", alert)
    return alert


def _enqueue_email(alert_id: int) -> None:
    from billing.tasks import email_spend_alert  # tasks imports this module

    email_spend_alert.delay(alert_id)


def alert_email_send(*, alert_id: int) -> bool:
    """Email the alert to the tenant's owners once: claimed by setting `emailed_at`, released
    again when the mail server did not take it, so the sweep tries again."""
    claimed = SpendAlert.objects.filter(pk=alert_id, emailed_at__isnull=True).update(
        emailed_at=timezone.now()
    )
    if not claimed:
        return False
    alert = SpendAlert.objects.select_related("tenant").get(pk=alert_id)
    tenant = alert.tenant
    whose = f"key {alert.scope_ref}" if alert.scope_ref else "its"
    subject = (
        f"{tenant.name or tenant.slug} has used {alert.threshold}% of {whose} "
        f"{alert.period:%B %Y} budget"
    )
    if alert.scope == SpendAlert.Scope.CREDIT_BALANCE:
        subject = (f"{tenant.name or tenant.slug}'s prepaid credits are down to "
                   f"{money.round_line(alert.spend, alert.currency)} {alert.currency}")  # fmt: skip
    body = render_to_string("billing/emails/spend_alert.txt", {"alert": alert, "tenant": tenant})
    if not owners_email(tenant=tenant, subject=subject, body=body):
        SpendAlert.objects.filter(pk=alert_id).update(emailed_at=None)
        return False
    return True


def alerts_unemailed(*, older_than_seconds: int = 60) -> list[int]:
    """Alerts whose email was never sent (the task was lost, the mail server refused)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return list(
        SpendAlert.objects.filter(emailed_at__isnull=True, created_at__lte=cutoff).values_list(
            "pk", flat=True
        )[:500]
    )
