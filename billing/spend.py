"""Running money counters kept next to admission (Redis, or process memory in the embedded
default), so a budget or credit check costs no extra round trip. All in whole picos (10^-12 of
the currency, the ledger's places: `money.to_picos`), exact integers.

  adm:{t}:spend:M          the tenant's spend in month M: added by the gateway when a request
                           is settled (gateway.admission), with the request's exact cost
  adm:{t}:k<id>:spend:M    the same for one API key, for its own budget
  adm:{t}:credit:granted   a prepaid tenant's credits granted, less those that lapsed: set
                           from the credit ledger (billing)
  adm:{t}:credit:used      its credits drawn down, all time: added at settlement like spend

The ledger in PostgreSQL stays the truth. The counters run ahead of it (a request is settled
before its event is stored), so reconciling only ever raises a counter to what the ledger
says, in one atomic step: it cannot undo an addition made meanwhile, and it heals a Redis that
lost its data.
"""

import threading
from datetime import datetime

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from billing import money
from billing.models import UsageRecord
from saas_platform.periods import day_start, month_key, month_start
from saas_platform.redis_clients import sync_client
from tenants.apikeys import KEY_PREFIX
from tenants.models import ApiKey


# Hash-tagged like the admission keys, so the admission script may use them in a cluster.
def spend_key(tenant_id: int, month: str) -> str:
    return f"adm:{{{tenant_id}}}:spend:{month}"


def key_spend_key(tenant_id: int, key_id: int, month: str) -> str:
    return f"adm:{{{tenant_id}}}:k{key_id}:spend:{month}"


def credit_granted_key(tenant_id: int) -> str:
    return f"adm:{{{tenant_id}}}:credit:granted"


def credit_used_key(tenant_id: int) -> str:
    return f"adm:{{{tenant_id}}}:credit:used"


SPEND_TTL_SECONDS = 40 * 24 * 3600  # a month's counters: past the month's end, then gone

_local: dict[str, int] = {}
_local_lock = threading.Lock()

# Raise a counter to at least ARGV[1] (both non-negative decimal strings), keeping its TTL
# rule. Compared as strings: Lua's numbers are doubles, exact only to 2^53 picos (9,007 units).
_RAISE = """
local current = redis.call('GET', KEYS[1]) or '0'
local floor = ARGV[1]
if #floor > #current or (#floor == #current and floor > current) then
  redis.call('SET', KEYS[1], floor)
end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"""


def _redis():
    return sync_client(settings.REDIS_URL)


def local_counters():
    """The embedded default's counters and their lock (read by the in-process admission)."""
    return _local, _local_lock


def counter_get(key: str) -> int:
    if settings.REDIS_URL:
        return int(_redis().get(key) or 0)
    with _local_lock:
        return _local.get(key, 0)


def counter_set(key: str, picos: int, *, ttl: int = 0) -> None:
    if settings.REDIS_URL:
        _redis().set(key, picos, ex=ttl or None)
    else:
        with _local_lock:
            _local[key] = picos


def counter_raise(key: str, picos: int, *, ttl: int = 0) -> None:
    """Raise the counter to `picos` if it is below (never lowers it; atomic)."""
    if settings.REDIS_URL:
        # Registered on the process's client for REDIS_URL each time (only a SHA-1 is made):
        # a script object is bound to the client it was made on.
        _redis().register_script(_RAISE)(keys=[key], args=[max(0, picos), ttl])
    else:
        with _local_lock:
            _local[key] = max(_local.get(key, 0), picos)


def spend_get(tenant_id: int, month: str) -> int:
    return counter_get(spend_key(tenant_id, month))


def spend_reconcile(moment: datetime | None = None, *, tenant_ids=None) -> None:
    """Raise every tenant's (or `tenant_ids`') and key's running spend this month to what the
    ledger (the truth) has stored: heals a Redis that lost its data, and can never undo a
    settlement made while it runs."""
    moment = moment or timezone.now()
    start = day_start(month_start(moment))
    month = month_key(moment)
    rows = UsageRecord.objects.filter(occurred_at__gte=start, occurred_at__lte=moment)
    if tenant_ids is not None:
        rows = rows.filter(tenant_id__in=set(tenant_ids))
    for row in rows.values("tenant_id").annotate(total=Sum("amount")):
        counter_raise(spend_key(row["tenant_id"], month), money.to_picos(row["total"]),
                      ttl=SPEND_TTL_SECONDS)  # fmt: skip
    keyed = _key_ids_by_prefix()
    for row in rows.values("tenant_id", "api_key_prefix").annotate(total=Sum("amount")):
        key_id = keyed.get(row["api_key_prefix"])
        if key_id is not None:
            counter_raise(key_spend_key(row["tenant_id"], key_id, month),
                          money.to_picos(row["total"]), ttl=SPEND_TTL_SECONDS)  # fmt: skip


def _key_ids_by_prefix() -> dict[str, int]:
    budgeted = ApiKey.objects.filter(monthly_budget__isnull=False).values_list("id", "prefix")
    return {KEY_PREFIX + prefix: key_id for key_id, prefix in budgeted}
