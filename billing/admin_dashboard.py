"""The admin's usage dashboard: tokens per day by tenant and by model, the top tenants, and the
gateway's refusals by reason, over the last 7, 30 or 90 days; and how far the ledger is behind
the usage stream, now. Usage comes from the daily rollups (billing.selectors), refusals from
their daily Redis counts (tenants.refusals), the lag from the stream (billing.ledger_lag).
"""

import logging
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.template.response import TemplateResponse

from billing.ledger_lag import LedgerLag, ledger_lag_check
from billing.selectors import tokens_by_model, tokens_by_tenant, top_tenants
from saas_platform.charts import daily_chart, ranking_chart
from saas_platform.periods import last_days
from tenants.refusals import refusals_per_day

logger = logging.getLogger(__name__)

RANGES = (7, 30, 90)
DEFAULT_DAYS = 30


@dataclass(frozen=True)
class LagPanel:
    lag: LedgerLag | None  # None without Redis: events are stored as they come
    threshold: int
    drained_seconds_ago: float | None
    error: str = ""


def _lag_panel() -> LagPanel:
    threshold = settings.LEDGER_LAG_ALERT_SECONDS
    try:
        lag = ledger_lag_check()
    except redis.RedisError as error:
        logger.warning("usage dashboard: ledger lag unavailable: %s", error)
        return LagPanel(None, threshold, None, error=f"Redis did not answer: {error}")
    ago = None
    if lag and lag.last_drain_at is not None:
        ago = max(0.0, time.time() - lag.last_drain_at)
    return LagPanel(lag, threshold, ago)


def usage_dashboard(model_admin, request):
    try:
        days = int(request.GET.get("days", DEFAULT_DAYS))
    except ValueError:
        days = DEFAULT_DAYS
    if days not in RANGES:
        days = DEFAULT_DAYS
    first, last = last_days(days)
    refused = refusals_per_day(first, last)
    by_reason: dict[str, int] = {}
    for _day, reason, count in refused:
        by_reason[reason] = by_reason.get(reason, 0) + count
    leaders = top_tenants(first=first, last=last)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Usage dashboard",
        "opts": model_admin.model._meta,
        "media": model_admin.media,
        "days": days,
        "ranges": RANGES,
        "first": first,
        "last": last,
        "by_tenant": daily_chart(f"Tokens per day by tenant, last {days} days",
                                 tokens_by_tenant(first=first, last=last), first, last),
        "by_model": daily_chart(f"Tokens per day by model, last {days} days",
                                tokens_by_model(first=first, last=last), first, last),
        "top_tenants": leaders,
        "top_chart": ranking_chart("Top tenants by tokens",
                                   [(row.slug, row.tokens) for row in leaders], unit="tokens"),
        "refusals": sorted(by_reason.items(), key=lambda item: -item[1]),
        "refusal_chart": ranking_chart(f"Refused requests by reason, last {days} days",
                                       by_reason.items(), unit="requests"),
        "ledger": _lag_panel(),
        "refusals_daily": daily_chart("Refused requests per day by reason", refused, first,
                                      last, unit="requests"),
    }  # fmt: skip
    return TemplateResponse(request, "admin/billing/usage_dashboard.html", context)
