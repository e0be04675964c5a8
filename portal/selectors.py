"""What the portal reads: a tenant's usage by day and model from the daily rollups the ledger
keeps (billing.DailyUsage), so pages never scan the per-request ledger."""

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.db.models import Sum

from billing import money
from billing.models import DailyUsage, Invoice
from billing.selectors import tokens_by_model
from saas_platform.charts import Chart, daily_chart
from saas_platform.periods import month_last_day, month_start


@dataclass(frozen=True)
class MonthSummary:
    month: date
    requests: int
    prompt_tokens: int
    completion_tokens: int
    spend: Decimal  # rounded as an invoice line would be
    currency: str
    budget: Decimal | None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def budget_used_percent(self) -> int | None:
        if not self.budget:
            return None
        return min(999, int(self.spend * 100 / self.budget))


def daily_rows(tenant, first: date, last: date, model_id: str = ""):
    rows = DailyUsage.objects.filter(tenant=tenant, day__gte=first, day__lte=last)
    return rows.filter(model_id=model_id) if model_id else rows


def month_summary(tenant, month: date | None = None) -> MonthSummary:
    month = month or month_start()
    totals = daily_rows(tenant, month, month_last_day(month)).aggregate(
        requests=Sum("requests"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"),
        amount=Sum("amount"),
    )  # fmt: skip
    currency = settings.BILLING_CURRENCY
    return MonthSummary(
        month=month,
        requests=totals["requests"] or 0,
        prompt_tokens=totals["prompt"] or 0,
        completion_tokens=totals["completion"] or 0,
        spend=money.round_line(totals["amount"] or Decimal(0), currency),
        currency=currency,
        budget=tenant.monthly_budget,
    )


def usage_chart(tenant, first: date, last: date, model_id: str = "") -> Chart:
    points = tokens_by_model(tenant=tenant, first=first, last=last, model_id=model_id)
    return daily_chart("Tokens per day, by model", points, first, last, unit="tokens")


def usage_table(tenant, first: date, last: date, model_id: str = ""):
    """One row per day and model, newest first, with the day's rounded-for-display amount."""
    return daily_rows(tenant, first, last, model_id).order_by("-day", "model_id")


def models_used(tenant) -> list[str]:
    return list(
        DailyUsage.objects.filter(tenant=tenant)
        .values_list("model_id", flat=True)
        .distinct()
        .order_by("model_id")
    )


def invoices_of(tenant):
    return Invoice.objects.filter(tenant=tenant).order_by("-period")
