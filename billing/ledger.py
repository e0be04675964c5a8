"""Storing usage events in the ledger, exactly once each, priced at their own time.

Gateways publish events to a durable buffer, a Redis stream (`LedgerRecorder`); a Celery task
drains it in batches (`ledger_drain`) through a consumer group. An entry is acknowledged only
after its batch is committed, so a worker killed mid-batch leaves it pending, and another drain
claims and stores it again: `request_id` makes that second write a no-op. Without Redis (the
embedded default) the recorder stores events directly.
"""

import asyncio
import json
import logging
import os
import socket
import weakref
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db import connection, transaction

from billing import money, spend
from billing.models import DailyUsage, UsageRecord
from billing.pricing import PriceBook
from billing.usage import UsageEvent
from saas_platform import metrics
from saas_platform.threads import in_db_thread
from tenants.models import Tenant

logger = logging.getLogger(__name__)

STREAM = "usage:events"
GROUP = "ledger"
# Fields compared when a request id comes twice: the same payload is a duplicate delivery,
# a different one is refused.
_COMPARED = ("tenant_id", "model_id", "prompt_tokens", "completion_tokens", "status")


@dataclass(frozen=True)
class StoreResult:
    stored: int
    duplicates: int
    conflicts: int


def _record(event: UsageEvent, book: PriceBook) -> UsageRecord:
    occurred_at = datetime.fromtimestamp(event.timestamp, tz=UTC)
    tenant_id = int(event.tenant_id)
    price = book.price_for(tenant_id, event.model, occurred_at)
    return UsageRecord(
        request_id=event.request_id,
        tenant_id=tenant_id,
        api_key_prefix=event.api_key_prefix,
        model_id=event.model,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        occurred_at=occurred_at,
        latency_ms=event.latency_ms,
        status=event.status,
        counted=event.usage_source == "counted",
        price=price,
        amount=money.usage_amount(event.prompt_tokens, event.completion_tokens, price),
        currency=price.currency if price else settings.BILLING_CURRENCY,
    )


def _insert_new(records: list[UsageRecord]) -> list[UsageRecord]:
    """Insert the records whose request id is not stored yet; return those it inserted. A
    concurrent drain that stored the same id first wins; its rows are not returned here, so
    each row is added to the rollups exactly once."""
    if not records:
        return []
    meta = UsageRecord._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [f.get_db_prep_save(f.pre_save(r, add=True), connection) for r in records
              for f in fields]  # fmt: skip
    # Names from the model's metadata, quoted; every value a parameter.
    columns = ", ".join(quote(f.column) for f in fields)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({columns}) "  # noqa: S608 # nosec B608: names quoted
        f"VALUES {', '.join([row] * len(records))} "
        f"ON CONFLICT ({quote('request_id')}) DO NOTHING RETURNING {quote('request_id')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        inserted = {request_id for (request_id,) in cursor.fetchall()}
    return [r for r in records if r.request_id in inserted]


def _rollup(records: list[UsageRecord]) -> None:
    """Add the inserted records to their daily rollups, one upsert for the batch: each batch
    costs the same however large the day already is."""
    sums: dict[tuple[int, str, object], list] = {}
    for r in records:
        total = sums.setdefault((r.tenant_id, r.model_id, r.occurred_at.date()), [0, 0, 0, 0])
        total[0] += 1
        total[1] += r.prompt_tokens
        total[2] += r.completion_tokens
        total[3] += r.amount
    if not sums:
        return
    quote = connection.ops.quote_name
    table = quote(DailyUsage._meta.db_table)
    counts = ("requests", "prompt_tokens", "completion_tokens", "amount")
    amount = DailyUsage._meta.get_field("amount")
    params = []
    for (tenant_id, model_id, day), (n, prompt, completion, total) in sums.items():
        params += [tenant_id, model_id, day, n, prompt, completion,
                   amount.get_db_prep_save(total, connection)]  # fmt: skip
    columns = ", ".join(quote(c) for c in ("tenant_id", "model_id", "day", *counts))
    updates = ", ".join(f"{quote(c)} = {table}.{quote(c)} + EXCLUDED.{quote(c)}" for c in counts)
    sql = (  # names from the model's metadata, every value a parameter
        f"INSERT INTO {table} ({columns}) VALUES "  # noqa: S608 # nosec B608: names quoted
        + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(sums))
        + f" ON CONFLICT (tenant_id, model_id, day) DO UPDATE SET {updates}"  # nosec B608
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def ledger_store(events: list[UsageEvent]) -> StoreResult:
    """Store events not stored yet, priced at their own time; update rollups and spend."""
    by_id = {event.request_id: event for event in events}
    existing = {
        row["request_id"]: row
        for row in UsageRecord.objects.filter(request_id__in=by_id).values("request_id", *_COMPARED)
    }
    duplicates = conflicts = 0
    for request_id, row in existing.items():
        event = by_id.pop(request_id)
        record = _record(event, PriceBook([]))
        if all(getattr(record, field) == row[field] for field in _COMPARED):
            duplicates += 1
        else:
            conflicts += 1
            metrics.LEDGER_CONFLICTS.inc()
            logger.error(
                "usage event %s refused: a different payload is already stored", request_id
            )
    known = set(
        Tenant.objects.filter(pk__in={int(e.tenant_id) for e in by_id.values()}).values_list(
            "pk", flat=True
        )
    )
    for request_id, event in list(by_id.items()):
        if int(event.tenant_id) not in known:
            # Its tenant was deleted while the event was in flight (a tenant without usage).
            # Logged whole, so nothing vanishes silently; it cannot be stored.
            del by_id[request_id]
            metrics.LEDGER_ORPHANS.inc()
            logger.error("usage event for an unknown tenant dropped: %s", event.to_dict())
    book = PriceBook({event.model for event in by_id.values()})
    records = [_record(event, book) for event in by_id.values()]
    with transaction.atomic():
        records = _insert_new(records)
        _rollup(records)
    added: dict[tuple[int, str], int] = defaultdict(int)
    for record in records:
        added[(record.tenant_id, spend.month_key(record.occurred_at))] += money.to_micros(
            record.amount
        )
    spend.spend_add_many({key: micros for key, micros in added.items() if micros})
    metrics.LEDGER_STORED.inc(len(records))
    return StoreResult(stored=len(records), duplicates=duplicates, conflicts=conflicts)


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)


class LedgerRecorder:
    """The UsageRecorder for the ledger: appends the event to the Redis stream (the durable
    buffer), or without Redis stores it at once. `arecord` is the gateway's direct path."""

    def __init__(self):
        self.client = _redis() if settings.REDIS_URL else None
        self._async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def record(self, event: UsageEvent) -> None:
        if self.client is None:
            ledger_store([event])
            return
        self.client.xadd(STREAM, {"event": _encode(event)})

    async def arecord(self, event: UsageEvent) -> None:
        if self.client is None:
            await _store_in_thread([event])
            return
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=1)
            self._async_clients[loop] = client
        await client.xadd(STREAM, {"event": _encode(event)})


_store_in_thread = in_db_thread(lambda events: ledger_store(events))


def _encode(event: UsageEvent) -> str:
    return json.dumps(event.to_dict(), separators=(",", ":"))


def _decode(raw: bytes) -> UsageEvent:
    return UsageEvent(**json.loads(raw))


def _ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def _crash_if(point: str) -> None:
    # Fault injection for the tests that prove a killed worker loses and doubles nothing:
    # LEDGER_CRASH_AT names the point where the process dies at once, as SIGKILL would.
    if os.environ.get("LEDGER_CRASH_AT") == point:
        os._exit(137)


def ledger_drain(*, batch_size: int | None = None, max_batches: int = 100) -> int:
    """Move events from the stream into the ledger, a batch at a time, until it is empty (or
    `max_batches`). Entries another consumer took but never acknowledged (it died) are claimed
    once they have been idle LEDGER_RECLAIM_IDLE_SECONDS. Returns the events stored."""
    batch_size = batch_size or settings.LEDGER_BATCH_SIZE
    client = _redis()
    _ensure_group(client)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    stored = 0
    for _ in range(max_batches):
        # First what this consumer was given and never acknowledged (a batch that failed, e.g.
        # while PostgreSQL was down), then what dead consumers left, then new entries.
        mine = client.xreadgroup(GROUP, consumer, {STREAM: "0"}, count=batch_size)
        entries = [entry for _stream, items in mine or [] for entry in items if entry[1]]
        if len(entries) < batch_size:
            _next, claimed, _deleted = client.xautoclaim(
                STREAM, GROUP, consumer, int(settings.LEDGER_RECLAIM_IDLE_SECONDS * 1000),
                start_id="0-0", count=batch_size - len(entries),
            )  # fmt: skip
            entries.extend(claimed)
        if len(entries) < batch_size:
            fresh = client.xreadgroup(
                GROUP, consumer, {STREAM: ">"}, count=batch_size - len(entries)
            )
            for _stream, items in fresh or []:
                entries.extend(items)
        if not entries:
            break
        events = [_decode(fields[b"event"]) for _id, fields in entries if fields]
        _crash_if("before_commit")
        result = ledger_store(events)
        _crash_if("after_commit")
        ids = [entry_id for entry_id, _fields in entries]
        client.xack(STREAM, GROUP, *ids)
        client.xdel(STREAM, *ids)
        stored += result.stored
    return stored
