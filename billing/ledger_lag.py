"""How far the ledger is behind the usage stream, from Redis: the events waiting to be stored,
the age of the oldest, and when a drain last ran to the end.

Every reader of these figures (GET /readyz, /metrics, the admin's usage dashboard, and beat
every 15 s) goes through `ledger_lag_check`, which also emails the operators once when the
oldest waiting event passes LEDGER_LAG_ALERT_SECONDS and once when it is back under: a stopped
ledger worker takes its beat with it, so the gateways' health checks and Prometheus's scrapes
are what notice. One key decides which process sends each email (SET NX as the lag passes,
DEL as it recovers), so however many servers look, each email goes once.
"""

import time
from dataclasses import dataclass

from django.conf import settings
from prometheus_client.core import GaugeMetricFamily

from billing.ledger import LAST_DRAIN, STREAM
from saas_platform.operators import operators_notify
from saas_platform.redis_clients import sync_client

# Set while the lag is over the threshold: when it passed it (Unix seconds).
ALERT = "{usage:events}:lag-alert"


@dataclass(frozen=True)
class LedgerLag:
    waiting: int  # events in the stream, not stored yet
    oldest_seconds: float  # age of the oldest of them; 0 when none waits
    last_drain_at: float | None  # Unix seconds; None before the first drain

    @property
    def behind(self) -> bool:
        return self.oldest_seconds > settings.LEDGER_LAG_ALERT_SECONDS

    def describe(self) -> str:
        return (
            f"the oldest of {self.waiting} unstored usage events is {self.oldest_seconds:.0f} s "
            f"old (LEDGER_LAG_ALERT_SECONDS is {settings.LEDGER_LAG_ALERT_SECONDS})"
        )


def ledger_lag() -> LedgerLag | None:
    """The figures, in one round trip; None without Redis (events are stored directly)."""
    if not settings.REDIS_URL:
        return None
    with sync_client().pipeline(transaction=False) as pipe:
        pipe.xlen(STREAM)
        pipe.xrange(STREAM, count=1)  # entries are deleted once stored: the first waits longest
        pipe.get(LAST_DRAIN)
        waiting, first, last_drain = pipe.execute()
    oldest = 0.0
    if first:
        added_ms = int(first[0][0].split(b"-")[0])  # an entry id is its time in ms, then a serial
        oldest = max(0.0, time.time() - added_ms / 1000)
    return LedgerLag(waiting, oldest, float(last_drain) if last_drain else None)


def ledger_lag_check() -> LedgerLag | None:
    """`ledger_lag`, emailing the operators if the lag has just passed the threshold or come
    back under it (see the module's docstring)."""
    lag = ledger_lag()
    if lag is None:
        return None
    client = sync_client()
    if lag.behind:
        if client.set(ALERT, repr(time.time()), nx=True):
            sent = operators_notify(
                subject="Usage is not reaching the ledger",
                body=f"On the platform's usage stream, {lag.describe()}. Budgets, invoices "
                "and the portal do not move until usage is stored: is the ledger worker "
                "(celery worker -B) running?",
            )
            if not sent:
                client.delete(ALERT)  # the next check tries again
    elif client.delete(ALERT):
        operators_notify(
            subject="Usage reaches the ledger again",
            body=f"The ledger has caught up: {lag.waiting} usage events wait to be stored.",
        )
    return lag


def ledger_readiness() -> str | None:
    """GET /readyz's check (READINESS_CHECKS): what is wrong, or None."""
    lag = ledger_lag_check()
    if lag is None or not lag.behind:
        return None
    return f"{lag.describe()}: is the ledger worker running?"


def ledger_lag_collector():
    """/metrics (METRICS_COLLECTORS). Events stored per second is the rate of
    billing_ledger_events_stored_total."""
    lag = ledger_lag_check()
    threshold = GaugeMetricFamily(
        "billing_ledger_lag_alert_seconds", "LEDGER_LAG_ALERT_SECONDS: /readyz fails past this lag"
    )
    threshold.add_metric([], settings.LEDGER_LAG_ALERT_SECONDS)
    yield threshold
    if lag is None:
        return
    yield GaugeMetricFamily(
        "billing_ledger_stream_length",
        "Usage events in the stream, not stored yet",
        value=lag.waiting,
    )
    yield GaugeMetricFamily(
        "billing_ledger_oldest_unstored_seconds",
        "Age of the oldest usage event not stored yet (0: none waits)",
        value=lag.oldest_seconds,
    )
    last = GaugeMetricFamily(
        "billing_ledger_last_drain_timestamp_seconds",
        "When a ledger drain last ran to the end (Unix time)",
    )
    if lag.last_drain_at is not None:
        last.add_metric([], lag.last_drain_at)
    yield last
