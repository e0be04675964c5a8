"""Billing reads. Usage per day, tenant and model (the operator's admin and the tenants' portal)
always comes from the daily rollups (DailyUsage: one row per tenant, model and day), never by
scanning the ledger, so a page costs the same with ten rows of usage or tens of millions."""

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.db.models import DecimalField, F, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from billing.models import DailyUsage, UsageRecord
from billing.money import round_line
from saas_platform.periods import month_start


def _tenant_month_sum(expression, since: date, output_field=None):
    rows = (
        DailyUsage.objects.filter(tenant=OuterRef("pk"), day__gte=since)
        .order_by()
        .values("tenant")
        .annotate(total=Sum(expression))
        .values("total")
    )
    return Subquery(rows, output_field=output_field)


def with_month_usage(tenants: QuerySet, *, since: date | None = None) -> QuerySet:
    """Tenants annotated with `month_tokens` and `month_spend` (from `since`, default the first
    of this month): one query for the whole page, however many tenants it shows."""
    since = since or month_start()
    money = DecimalField(max_digits=24, decimal_places=12)
    return tenants.annotate(
        month_tokens=Coalesce(
            _tenant_month_sum(F("prompt_tokens") + F("completion_tokens"), since), Value(0)
        ),
        month_spend=Coalesce(
            _tenant_month_sum("amount", since, output_field=money),
            Value(Decimal(0)),
            output_field=money,
        ),
    )


def tokens_by_model(
    *, tenant=None, first: date, last: date, model_id: str = ""
) -> list[tuple[date, str, int]]:
    """(day, model, tokens) for every day in [first, last], one tenant's or everyone's, every
    model's or one's."""
    rows = DailyUsage.objects.filter(day__gte=first, day__lte=last)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    if model_id:
        rows = rows.filter(model_id=model_id)
    sums = (
        rows.order_by()
        .values("day", "model_id")
        .annotate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
    )
    return [(row["day"], row["model_id"], row["tokens"]) for row in sums]


def tokens_by_tenant(*, first: date, last: date) -> list[tuple[date, str, int]]:
    """(day, tenant slug, tokens) for every day in [first, last]."""
    sums = (
        DailyUsage.objects.filter(day__gte=first, day__lte=last)
        .order_by()
        .values("day", "tenant__slug")
        .annotate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
    )
    return [(row["day"], row["tenant__slug"], row["tokens"]) for row in sums]


@dataclass(frozen=True)
class TenantTotal:
    tenant_id: int
    slug: str
    requests: int
    tokens: int
    amount: Decimal


def top_tenants(*, first: date, last: date, limit: int = 10) -> list[TenantTotal]:
    """The tenants that used the most tokens in [first, last], most first."""
    sums = (
        DailyUsage.objects.filter(day__gte=first, day__lte=last)
        .order_by()
        .values("tenant_id", "tenant__slug")
        .annotate(
            requests=Sum("requests"),
            tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
            amount=Sum("amount"),
        )
        .order_by("-tokens", "tenant__slug")[:limit]
    )
    return [
        TenantTotal(
            row["tenant_id"], row["tenant__slug"], row["requests"], row["tokens"], row["amount"]
        )
        for row in sums
    ]


def key_spend_this_month(tenant) -> dict[str, Decimal]:
    """Each of the tenant's keys' spend this month, by display prefix: from the ledger (one
    tenant's month, on its index), since the rollups are not kept per key."""
    rows = (
        UsageRecord.objects.filter(tenant=tenant, occurred_at__gte=month_start())
        .values("api_key_prefix")
        .annotate(total=Sum("amount"))
    )
    return {
        row["api_key_prefix"]: round_line(row["total"], settings.BILLING_CURRENCY) for row in rows
    }
