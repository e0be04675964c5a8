"""Durable counts of the gateway's refusals, per UTC day and reason, for the operator's usage
dashboard. Prometheus (`gateway_refusals_total`) has the same counts per process, but they
vanish with the process and need a scraper; these are one Redis hash per day (`HINCRBY`),
kept for REFUSALS_TTL_SECONDS.

The refused request never waits for the count: it is written by a background task on the
server's event loop (one pipelined round trip), and a failure to write it is logged, never
raised. Without Redis (the embedded default, one server process) the counts live in process
memory, where that process's admin reads them.
"""

import asyncio
import logging
import threading
from collections import Counter
from datetime import UTC, date, datetime

from django.conf import settings
from redis.exceptions import RedisError

from saas_platform import periods
from saas_platform.redis_clients import async_client, sync_client

logger = logging.getLogger(__name__)

REFUSALS_TTL_SECONDS = 400 * 24 * 3600  # a year of dashboards, then gone

_local: Counter = Counter()
_local_lock = threading.Lock()
_pending: set[asyncio.Task] = set()  # strong references, so a task is not collected mid-write


def refusals_key(day: date) -> str:
    # One hash a day, written with plain commands (no script): any slot of a cluster will do.
    return f"refusals:{day.isoformat()}"


def _today() -> date:
    return datetime.now(tz=UTC).date()


async def _write(key: str, reason: str) -> None:
    try:
        async with async_client().pipeline(transaction=False) as pipe:
            pipe.hincrby(key, reason, 1)
            pipe.expire(key, REFUSALS_TTL_SECONDS)
            await pipe.execute()
    except (RedisError, OSError) as error:
        logger.warning("could not count a %s refusal: %s", reason, error)


def count_refusal(reason: str) -> None:
    """Count one refusal for today. Never blocks the caller and never raises."""
    day = _today()
    if not settings.REDIS_URL:
        with _local_lock:
            _local[(day, reason)] += 1
        return
    key = refusals_key(day)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # called from synchronous code: write it here
        try:
            pipe = sync_client().pipeline(transaction=False)
            pipe.hincrby(key, reason, 1).expire(key, REFUSALS_TTL_SECONDS).execute()
        except (RedisError, OSError) as error:
            logger.warning("could not count a %s refusal: %s", reason, error)
        return
    task = loop.create_task(_write(key, reason))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


def refusals_per_day(first: date, last: date) -> list[tuple[date, str, int]]:
    """(day, reason, count) for every day in [first, last] with refusals."""
    days = periods.days_of(first, last)
    if not settings.REDIS_URL:
        with _local_lock:
            return [(day, reason, n) for (day, reason), n in _local.items() if day in days]
    try:
        pipe = sync_client(decode_responses=True).pipeline(transaction=False)
        for day in days:
            pipe.hgetall(refusals_key(day))
        counts = pipe.execute()
    except (RedisError, OSError) as error:
        logger.warning("could not read refusal counts: %s", error)
        return []
    return [
        (day, reason, int(n))
        for day, by_reason in zip(days, counts, strict=True)
        for reason, n in by_reason.items()
    ]
