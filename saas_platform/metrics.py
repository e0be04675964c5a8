"""Prometheus metrics, served at /metrics.

What a server process counts (requests, refusals, latency) is that process's: with several server
processes, set PROMETHEUS_MULTIPROC_DIR so that every process's counters are summed
(prometheus_client's multiprocess mode). What Celery workers count (loads, evictions, events
stored) is a `SharedCounter` in Redis, since workers serve no /metrics; and the apps' figures of
the whole platform (ledger lag, node memory) are read when /metrics is scraped, by the collectors
that METRICS_COLLECTORS names. Those two are the same on every server: in PromQL take `max` of
them across instances, not `sum`.
"""

import functools
import hmac
import logging
import os
import threading
from collections import defaultdict

import orjson
import redis
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse
from django.utils.module_loading import import_string
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily

from saas_platform.addresses import address_in
from saas_platform.redis_clients import sync_client

logger = logging.getLogger(__name__)


class SharedCounter:
    """A counter of the whole platform: each increment is a HINCRBY on one Redis hash (a field per
    label set), so any server's /metrics shows what every worker counted. Without REDIS_URL it
    is this process's (the embedded default runs everything in one). Blocking: never on the
    gateway's event loop. A Redis that does not answer loses the increment (logged), never the
    work it counts."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()):
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = labelnames
        self.key = f"metrics:{{{self.name}}}"  # one hash, one slot on a cluster
        self._local: dict[bytes, int] = defaultdict(int)
        self._lock = threading.Lock()
        _SHARED.append(self)

    def labels(self, **labels: str) -> "_Bound":
        return _Bound(self, orjson.dumps([str(labels[name]) for name in self.labelnames]))

    def inc(self, amount: int = 1) -> None:
        _Bound(self, b"[]").inc(amount)

    def values(self) -> dict[bytes, int]:
        """Label set (a JSON list) -> count."""
        if not settings.REDIS_URL:
            with self._lock:
                return dict(self._local)
        return {field: int(value) for field, value in sync_client().hgetall(self.key).items()}


class _Bound:
    def __init__(self, counter: SharedCounter, field: bytes):
        self.counter, self.field = counter, field

    def inc(self, amount: int = 1) -> None:
        if amount <= 0:
            return
        if not settings.REDIS_URL:
            with self.counter._lock:
                self.counter._local[self.field] += amount
            return
        try:
            sync_client().hincrby(self.counter.key, self.field, amount)
        except redis.RedisError as error:
            logger.warning("%s not counted: %s", self.counter.name, error)


_SHARED: list[SharedCounter] = []

REQUESTS = Counter(
    "gateway_requests_total", "Inference requests by endpoint and status", ["endpoint", "status"]
)
REFUSALS = Counter("gateway_refusals_total", "Requests refused, by reason", ["reason"])
ADMISSION_BACKEND_ERRORS = Counter(
    "gateway_admission_backend_errors_total",
    "Admission calls that could not reach the limiter backend, by outcome (refused or admitted)",
    ["outcome"],
)
USAGE_EVENTS = Counter("gateway_usage_events_total", "Usage events published")
USAGE_RECORDER_FAILURES = Counter(
    "gateway_usage_recorder_failures_total", "Failed usage recorder writes (retried)", ["recorder"]
)
UPSTREAM_ERRORS = Counter("gateway_upstream_errors_total", "Engine failures by kind", ["kind"])
LATENCY = Histogram("gateway_request_seconds", "Time from request to last byte", ["endpoint"])

QUEUE_WAIT = Histogram(
    "gateway_queue_wait_seconds",
    "Time admitted requests waited in a model's fair queue for an engine slot",
    ["model", "tenant"],
)
COLD_START_WAITS = Histogram("gateway_cold_start_wait_seconds", "Requests' waits for a load")
# Timed in the node worker that loads: only a node worker's own registry holds it.
LOAD_SECONDS = Histogram("models_load_seconds", "Time to load a model")

# Counted by Celery workers, shown by every server.
LEDGER_STORED = SharedCounter(
    "billing_ledger_events_stored_total", "Usage events stored in the ledger"
)
LEDGER_ORPHANS = SharedCounter(
    "billing_ledger_orphans_total", "Usage events dropped: their tenant no longer exists"
)
USAGE_FORWARD_FAILURES = SharedCounter(
    "billing_usage_forward_failures_total",
    "Stored usage events a recorder fed after the ledger (Kafka) did not take (retried)",
    ("recorder",),
)
LEDGER_CONFLICTS = SharedCounter(
    "billing_ledger_conflicts_total", "Usage events refused: same request id, different payload"
)
LOADS = SharedCounter("models_loads_total", "Models loaded, per node", ("node",))
EVICTIONS = SharedCounter(
    "models_evictions_total", "Models unloaded, per node and reason", ("node", "reason")
)


class _PlatformCollector:
    """The shared counters and the collectors of METRICS_COLLECTORS, read at each scrape. One that
    cannot read its source (Redis or the database down) is left out of that scrape, logged:
    /metrics still answers with the rest."""

    def collect(self):
        try:
            yield from self._shared()
        except (redis.RedisError, OSError) as error:
            logger.warning("metrics: shared counters unavailable: %s", error)
        for collector in _app_collectors():
            try:
                yield from list(collector())
            except (redis.RedisError, DatabaseError, OSError) as error:
                logger.warning("metrics: %s unavailable: %s", collector.__name__, error)

    def _shared(self):
        for counter in _SHARED:
            family = CounterMetricFamily(
                counter.name, counter.documentation, labels=counter.labelnames
            )
            values = counter.values()
            if not counter.labelnames and not values:
                values = {b"[]": 0}
            for field, value in sorted(values.items()):
                family.add_metric(orjson.loads(field), value)
            yield family


@functools.cache
def _app_collectors():
    return [import_string(path) for path in settings.METRICS_COLLECTORS]


_PLATFORM = CollectorRegistry()
_PLATFORM.register(_PlatformCollector())


def _scraper_allowed(request) -> bool:
    # The address as TRUSTED_PROXIES decides it (REMOTE_ADDR), and the token when one is set.
    if not address_in(request.META.get("REMOTE_ADDR"), settings.METRICS_ALLOWED_NETWORKS):
        return False
    if not settings.METRICS_TOKEN:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), settings.METRICS_TOKEN.encode()
    )


def metrics_view(request):
    """Prometheus exposition: every process's counters in multiprocess mode, else this one's.
    Served to METRICS_ALLOWED_IPS (loopback by default) with METRICS_TOKEN as a bearer token
    when it is set, and to staff users."""
    if not _scraper_allowed(request) and not (
        request.user.is_authenticated and request.user.is_staff
    ):
        return HttpResponse(status=403)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        own = generate_latest(registry)
    else:
        own = generate_latest()
    return HttpResponse(own + generate_latest(_PLATFORM), content_type=CONTENT_TYPE_LATEST)
