"""A tenant's running spend this month, where admission looks (Redis, or process memory in the
embedded default), so the budget check costs no extra round trip. Kept in whole millionths of
the currency; the ledger in PostgreSQL stays the truth and `spend_reconcile` resets from it."""

import threading
from datetime import datetime

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from billing import money
from billing.models import UsageRecord
from saas_platform.periods import day_start, month_key, month_start
from saas_platform.redis_clients import is_cluster, sync_client


def spend_key(tenant_id: int, month: str) -> str:
    # Hash-tagged like the admission keys, so the admission script may read it in a cluster.
    return f"adm:{{{tenant_id}}}:spend:{month}"


_local: dict[str, int] = {}
_local_lock = threading.Lock()

SPEND_TTL_SECONDS = 40 * 24 * 3600  # past the month's end, then gone


def _redis():
    return sync_client(settings.REDIS_URL)


def spend_add(tenant_id: int, month: str, micros: int) -> None:
    key = spend_key(tenant_id, month)
    if settings.REDIS_URL:
        pipe = _redis().pipeline()
        pipe.incrby(key, micros)
        pipe.expire(key, SPEND_TTL_SECONDS)
        pipe.execute()
    else:
        with _local_lock:
            _local[key] = _local.get(key, 0) + micros


# On one Redis only: its keys are many tenants' (many hash tags), which a cluster refuses in one
# script.
_ADD_MANY = """
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, ARGV[i + 1])
  redis.call('EXPIRE', key, ARGV[1])
end
"""
_add_many = None


def _add_script(client):
    global _add_many
    if _add_many is None:
        _add_many = client.register_script(_ADD_MANY)
    return _add_many


def spend_add_many(added: dict[tuple[int, str], int]) -> None:
    """spend_add for many (tenant, month) pairs: one round trip for them all."""
    if not added:
        return
    if not settings.REDIS_URL:
        for (tenant_id, month), micros in added.items():
            spend_add(tenant_id, month, micros)
        return
    client = _redis()
    if is_cluster(settings.REDIS_URL):
        # Each tenant's key lives on its own slot: a pipeline of INCRBY and EXPIRE per key,
        # sent to each node at once (one round trip per node). Each INCRBY is atomic; nothing
        # needs the batch to be.
        pipe = client.pipeline(transaction=False)
        for (tenant_id, month), micros in added.items():
            key = spend_key(tenant_id, month)
            pipe.incrby(key, micros)
            pipe.expire(key, SPEND_TTL_SECONDS)
        pipe.execute()
        return
    keys, amounts = [], []
    for (tenant_id, month), micros in added.items():
        keys.append(spend_key(tenant_id, month))
        amounts.append(micros)
    # One script, not a MULTI of two commands a key: as atomic, and a batch touching hundreds
    # of tenants costs one command to send and one reply to parse.
    _add_script(client)(keys=keys, args=[SPEND_TTL_SECONDS, *amounts], client=client)


def spend_set(tenant_id: int, month: str, micros: int) -> None:
    key = spend_key(tenant_id, month)
    if settings.REDIS_URL:
        _redis().set(key, micros, ex=SPEND_TTL_SECONDS)
    else:
        with _local_lock:
            _local[key] = micros


def spend_get_local(tenant_id: int, month: str) -> int:
    with _local_lock:
        return _local.get(spend_key(tenant_id, month), 0)


def spend_get(tenant_id: int, month: str) -> int:
    if settings.REDIS_URL:
        return int(_redis().get(spend_key(tenant_id, month)) or 0)
    return spend_get_local(tenant_id, month)


def spend_reconcile(moment: datetime | None = None) -> None:
    """Set every tenant's running spend this month from the ledger (the truth): heals a Redis
    that lost its data and any drift."""
    moment = moment or timezone.now()
    start = day_start(month_start(moment))
    totals = (
        UsageRecord.objects.filter(occurred_at__gte=start, occurred_at__lte=moment)
        .values("tenant_id")
        .annotate(total=Sum("amount"))
    )
    for row in totals:
        spend_set(row["tenant_id"], month_key(moment), money.to_micros(row["total"]))
