"""GET /healthz: 200 when every configured dependency answers, 503 naming those that do not."""

import logging

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from saas_platform.redis_clients import sync_client

logger = logging.getLogger(__name__)


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _check_redis() -> str | None:
    # The process's shared client (on a cluster, PING goes to every node): a stale pooled
    # connection is retried, so a Redis back from a restart is healthy at once.
    try:
        sync_client().ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def healthz(request):
    checks = {"database": _check_database()}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis()
    failing = {name: reason for name, reason in checks.items() if reason}
    if failing:
        logger.warning("healthz failing: %s", failing)
        return JsonResponse(
            {"status": "unavailable", "failing": sorted(failing), "errors": failing}, status=503
        )
    return JsonResponse({"status": "ok", "checks": sorted(checks)})
