"""GET /healthz: 200 when every configured dependency answers, 503 naming those that do not.
GET /readyz: the same, and the apps' checks of READINESS_CHECKS (the ledger keeping up with
the usage stream): 503 naming what is wrong, for a load balancer or a monitor."""

import logging

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.utils.module_loading import import_string

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


def _dependencies() -> dict[str, str | None]:
    checks = {"database": _check_database()}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis()
    return checks


def _app_check(path: str) -> str | None:
    try:
        return import_string(path)()
    except (redis.RedisError, DatabaseError) as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _answer(name: str, checks: dict[str, str | None]) -> JsonResponse:
    failing = {check: reason for check, reason in checks.items() if reason}
    if failing:
        logger.warning("%s failing: %s", name, failing)
        return JsonResponse(
            {"status": "unavailable", "failing": sorted(failing), "errors": failing}, status=503
        )
    return JsonResponse({"status": "ok", "checks": sorted(checks)})


def healthz(request):
    return _answer("healthz", _dependencies())


def readyz(request):
    checks = _dependencies()
    if not any(checks.values()):  # the apps' checks read the database and Redis
        checks.update({name: _app_check(path) for name, path in settings.READINESS_CHECKS.items()})
    return _answer("readyz", checks)
