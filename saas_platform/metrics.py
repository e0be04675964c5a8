"""Prometheus metrics of the gateway, served at /metrics. With several server processes, set
PROMETHEUS_MULTIPROC_DIR so that every process's counters are summed (prometheus_client's
multiprocess mode)."""

import hmac
import os

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from saas_platform.addresses import address_in

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

LEDGER_STORED = Counter("billing_ledger_events_stored_total", "Usage events stored in the ledger")
LOADS = Counter("models_loads_total", "Models loaded, per node", ["node"])
EVICTIONS = Counter(
    "models_evictions_total", "Models unloaded, per node and reason", ["node", "reason"]
)
NODE_USED_BYTES = Gauge("models_node_used_bytes", "Bytes held by models, per node", ["node"])
LOAD_SECONDS = Histogram("models_load_seconds", "Time to load a model")
COLD_START_WAITS = Histogram("gateway_cold_start_wait_seconds", "Requests' waits for a load")
LEDGER_ORPHANS = Counter(
    "billing_ledger_orphans_total", "Usage events dropped: their tenant no longer exists"
)
LEDGER_CONFLICTS = Counter(
    "billing_ledger_conflicts_total", "Usage events refused: same request id, different payload"
)


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
        return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
