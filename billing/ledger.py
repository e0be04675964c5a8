"""Storing usage events in the ledger, exactly once each, priced at their own time.

Gateways publish events to a durable buffer, a Redis stream (`LedgerRecorder`); a Celery task
drains it in batches (`ledger_drain`) through a consumer group, and hands what it stored to the
recorders fed after the ledger (the Kafka stream). An entry is acknowledged only after its batch
is committed and those recorders took its event, so a worker killed mid-batch (or a broker
down) leaves it pending, and a later drain stores it again: `request_id` makes that second
write a no-op, and only what the recorders did not take is handed to them again. Without Redis (the
embedded default) the recorder stores events directly.

The stream is one key, so on a Redis Cluster it and its consumer group live on one slot (one
node); the keys kept beside it (LAST_DRAIN, billing.ledger_lag's alert) carry the stream's name
as their hash tag, so they live on that slot too.
"""

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import orjson
import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from billing import alerts, credits, money
from billing.models import DailyUsage, UsageRecord
from billing.pricing import PriceBook
from billing.usage import UsageEvent, recorders_after_ledger
from saas_platform import metrics
from saas_platform.redis_clients import async_client, sync_client
from saas_platform.threads import in_db_thread
from tenants.models import Tenant

logger = logging.getLogger(__name__)

STREAM = "usage:events"
GROUP = "ledger"
# When a drain last ran to the end (Unix seconds). The hash tag puts it on the stream's slot.
LAST_DRAIN = "{usage:events}:last-drain"
# Fields compared when a request id comes twice: the same payload is a duplicate delivery,
# a different one is refused.
_COMPARED = ("tenant_id", "model_id", "prompt_tokens", "completion_tokens", "status",
             "cached_tokens")  # fmt: skip


@dataclass(frozen=True)
class StoreResult:
    stored: int
    duplicates: int
    conflicts: int
    # The request ids now in the ledger with the payload given: stored here or before.
    kept: frozenset[str] = frozenset()


# A ledger row's values, in this order, on both insert paths.
_COLUMNS = ("request_id", "tenant_id", "api_key_prefix", "model_id", "prompt_tokens",
            "completion_tokens", "occurred_at", "recorded_at", "latency_ms", "status", "counted",
            "price_id", "amount", "currency", "cached_tokens")  # fmt: skip
_STAGING = "billing_ledger_batch"  # PostgreSQL: this session's temporary table for COPY


class _Pricer:
    """Prices one batch: one PriceBook, and each (tenant, model, second) and each (price,
    tokens) worked out once, since a batch repeats them heavily. Same answers as
    `PriceBook.price_for` and `money.usage_amount` per event."""

    def __init__(self, model_ids):
        self.book = PriceBook(model_ids)
        self._moments: dict[int, datetime] = {}
        self._prices: dict[tuple, object] = {}
        self._amounts: dict[tuple, Decimal] = {}

    def moment(self, timestamp: int) -> datetime:
        found = self._moments.get(timestamp)
        if found is None:
            found = self._moments[timestamp] = datetime.fromtimestamp(timestamp, tz=UTC)
        return found

    def price(self, tenant_id: int, model_id: str, timestamp: int):
        key = (tenant_id, model_id, timestamp)
        if key not in self._prices:
            self._prices[key] = self.book.price_for(tenant_id, model_id, self.moment(timestamp))
        return self._prices[key]

    def amount(self, price, prompt_tokens: int, completion_tokens: int, cached: int) -> Decimal:
        key = (price.pk if price else None, prompt_tokens, completion_tokens, cached)
        found = self._amounts.get(key)
        if found is None:
            found = self._amounts[key] = money.usage_amount(
                prompt_tokens, completion_tokens, price, cached
            )
        return found


def _rows(events, pricer: _Pricer) -> list[tuple]:
    """One tuple of database values per event, in _COLUMNS order."""
    recorded_at = timezone.now()
    currency = settings.BILLING_CURRENCY
    rows = []
    for e in events:
        tenant_id = int(e.tenant_id)
        price = pricer.price(tenant_id, e.model, e.timestamp)
        rows.append((e.request_id, tenant_id, e.api_key_prefix, e.model, e.prompt_tokens,
                     e.completion_tokens, pricer.moment(e.timestamp), recorded_at, e.latency_ms,
                     e.status, e.usage_source == "counted", price.pk if price else None,
                     pricer.amount(price, e.prompt_tokens, e.completion_tokens, e.cached_tokens),
                     price.currency if price else currency, e.cached_tokens))  # fmt: skip
    return rows


# SQLite takes at most 32,766 parameters a statement; a row has one per column.
SQLITE_ROWS_PER_INSERT = 1000


def _insert_new(rows: list[tuple]) -> set[str]:
    """Insert the rows whose request id is not stored yet and add them to their daily rollups;
    return the ids it inserted. A concurrent drain that stored the same id first wins; its rows
    are not returned or added here, so each row is added to the rollups exactly once. Rows and
    rollups are written in key order, so two drains with overlapping batches wait on each
    other instead of deadlocking."""
    if not rows:
        return set()
    if connection.vendor != "postgresql":  # the embedded SQLite
        ordered, inserted = sorted(rows), set()
        for start in range(0, len(ordered), SQLITE_ROWS_PER_INSERT):
            inserted |= _insert_values(ordered[start : start + SQLITE_ROWS_PER_INSERT])
        return inserted
    quote = connection.ops.quote_name
    table = quote(UsageRecord._meta.db_table)
    columns = ", ".join(quote(c) for c in _COLUMNS)
    daily = quote(DailyUsage._meta.db_table)
    counts = ("requests", "prompt_tokens", "completion_tokens", "amount", "cached_tokens")
    updates = ", ".join(f"{quote(c)} = {daily}.{quote(c)} + EXCLUDED.{quote(c)}" for c in counts)
    with connection.cursor() as cursor:
        _copy_to_staging(cursor, table, columns, rows)
        # One statement: the staging table is emptied here too (ON COMMIT does not run inside
        # an outer atomic()), and the rollups are summed from exactly the rows inserted.
        cursor.execute(
            f"WITH batch AS (DELETE FROM {_STAGING} RETURNING {columns}), "  # noqa: S608 # nosec B608: names quoted or constant
            f"inserted AS (INSERT INTO {table} ({columns}) SELECT {columns} FROM batch "
            "ORDER BY request_id ON CONFLICT (request_id) DO NOTHING "
            "RETURNING request_id, tenant_id, model_id, occurred_at, prompt_tokens, "
            "completion_tokens, amount, cached_tokens), "
            f"rollup AS (INSERT INTO {daily} (tenant_id, model_id, day, "
            f"{', '.join(quote(c) for c in counts)}) "
            "SELECT tenant_id, model_id, (occurred_at AT TIME ZONE 'UTC')::date, count(*), "
            "sum(prompt_tokens), sum(completion_tokens), sum(amount), sum(cached_tokens) "
            "FROM inserted "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 "
            f"ON CONFLICT (tenant_id, model_id, day) DO UPDATE SET {updates}) "
            "SELECT request_id FROM inserted"
        )
        return {request_id for (request_id,) in cursor.fetchall()}


def _copy_to_staging(cursor, table: str, columns: str, rows: list[tuple]) -> None:
    """COPY the rows into the session's staging table, made on first use with the ledger's
    column types. ON COMMIT DELETE ROWS empties it in place, without catalog churn."""
    cursor.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS "  # noqa: S608 # nosec B608: names quoted or constant
        f"SELECT {columns} FROM {table} WITH NO DATA"
    )
    with cursor.copy(f"COPY {_STAGING} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _insert_values(rows: list[tuple]) -> set[str]:
    """The same for SQLite: one multi-row insert, then the rollups from the rows it inserted."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in _COLUMNS)
    row = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(UsageRecord._meta.db_table)} ({columns}) "  # noqa: S608 # nosec B608: names quoted
            f"VALUES {', '.join([row] * len(rows))} "
            "ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            [value for r in rows for value in r],
        )
        inserted = {request_id for (request_id,) in cursor.fetchall()}
    _rollup([r for r in rows if r[0] in inserted])
    return inserted


def _rollup(rows: list[tuple]) -> None:
    """Add the inserted rows to their daily rollups, one upsert for the batch: each batch
    costs the same however large the day already is. Keys in order."""
    sums: dict[tuple[int, str, object], list] = {}
    for r in rows:
        total = sums.setdefault((r[1], r[3], r[6].date()), [0, 0, 0, 0, 0])
        total[0] += 1
        total[1] += r[4]
        total[2] += r[5]
        total[3] += r[12]
        total[4] += r[14]
    if not sums:
        return
    quote = connection.ops.quote_name
    table = quote(DailyUsage._meta.db_table)
    counts = ("requests", "prompt_tokens", "completion_tokens", "amount", "cached_tokens")
    amount = DailyUsage._meta.get_field("amount")
    params = []
    for (tenant_id, model_id, day), (n, prompt, completion, total, cached) in sorted(sums.items()):
        params += [tenant_id, model_id, day, n, prompt, completion,
                   amount.get_db_prep_save(total, connection), cached]  # fmt: skip
    columns = ", ".join(quote(c) for c in ("tenant_id", "model_id", "day", *counts))
    updates = ", ".join(f"{quote(c)} = {table}.{quote(c)} + EXCLUDED.{quote(c)}" for c in counts)
    sql = (  # names from the model's metadata, every value a parameter
        f"INSERT INTO {table} ({columns}) VALUES "  # noqa: S608 # nosec B608: names quoted
        + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(sums))
        + f" ON CONFLICT (tenant_id, model_id, day) DO UPDATE SET {updates}"  # nosec B608
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _not_stored(events: list[UsageEvent]) -> tuple[set[str], int]:
    """Events whose request id was already stored: (the duplicates' ids, conflicts). A different
    payload under a stored id is refused and logged."""
    if not events:
        return set(), 0
    stored = {
        row["request_id"]: row
        for row in UsageRecord.objects.filter(request_id__in=[e.request_id for e in events]).values(
            "request_id", *_COMPARED
        )
    }
    duplicates, conflicts = set(), 0
    for e in events:
        row = stored[e.request_id]
        given = (int(e.tenant_id), e.model, e.prompt_tokens, e.completion_tokens, e.status,
                 e.cached_tokens)  # fmt: skip
        if given == tuple(row[field] for field in _COMPARED):
            duplicates.add(e.request_id)
        else:
            conflicts += 1
            metrics.LEDGER_CONFLICTS.inc()
            logger.error(
                "usage event %s refused: a different payload is already stored", e.request_id
            )
    return duplicates, conflicts


def _known(events: dict[str, UsageEvent]) -> dict[str, UsageEvent]:
    """The events whose tenant exists. One whose tenant was deleted while it was in flight (a
    tenant without usage) cannot be stored: it is logged whole, so nothing vanishes silently."""
    tenant_ids = {int(e.tenant_id) for e in events.values()}
    if connection.vendor == "postgresql":  # one array parameter, not one per tenant
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id FROM {connection.ops.quote_name(Tenant._meta.db_table)} "  # noqa: S608 # nosec B608: name quoted
                "WHERE id = ANY(%s)",
                [list(tenant_ids)],
            )
            known = {pk for (pk,) in cursor.fetchall()}
    else:
        known = set(Tenant.objects.filter(pk__in=tenant_ids).values_list("pk", flat=True))
    if len(known) == len(tenant_ids):
        return events
    for event in events.values():
        if int(event.tenant_id) not in known:
            metrics.LEDGER_ORPHANS.inc()
            logger.error("usage event for an unknown tenant dropped: %s", event.to_dict())
    return {rid: e for rid, e in events.items() if int(e.tenant_id) in known}


def ledger_store(events: list[UsageEvent]) -> StoreResult:
    """Store events not stored yet, priced at their own time; update rollups; draw the new
    usage of tenants with credits from their grants (billing.credits). (Running spend is added
    by the gateway when it settles a request: gateway.admission.)"""
    by_id = _known({event.request_id: event for event in events})
    pricer = _Pricer({event.model for event in by_id.values()})
    rows = _rows(by_id.values(), pricer)
    with transaction.atomic():
        inserted = _insert_new(rows)
        # In the same transaction: a retried batch inserts nothing, so it draws nothing.
        rows = [r for r in rows if r[0] in inserted]
        credits.credits_draw(request_ids=inserted, tenant_ids={r[1] for r in rows})
    duplicates, conflicts = _not_stored([e for rid, e in by_id.items() if rid not in inserted])
    metrics.LEDGER_STORED.inc(len(rows))
    _crash_if("before_alerts")
    # Every event's (tenant, month), duplicates too: a batch retried after a crash between its
    # commit and this check is checked again; the alerts' constraint keeps each one once.
    alerts.alerts_check(
        (int(e.tenant_id), date(*time.gmtime(e.timestamp)[:2], 1)) for e in by_id.values()
    )
    return StoreResult(stored=len(rows), duplicates=len(duplicates), conflicts=conflicts,
                       kept=frozenset(inserted | duplicates))  # fmt: skip


def _redis():
    return sync_client(settings.REDIS_URL)  # the process's one client


class LedgerRecorder:
    """The UsageRecorder for the ledger: appends the event to the Redis stream (the durable
    buffer), or without Redis stores it at once. `arecord` is the gateway's direct path, and
    `queue_append` puts the append in the gateway's own round trip."""

    def __init__(self):
        self.url = settings.REDIS_URL

    @property
    def client(self):
        """The process's blocking client (None without Redis), got when used: a cluster's
        client connects as it is made, and a recorder is made at start-up."""
        return sync_client(self.url) if self.url else None

    def record(self, event: UsageEvent) -> None:
        if not self.url:
            ledger_store([event])
            return
        self.client.xadd(STREAM, {"event": _encode(event)})

    async def arecord(self, event: UsageEvent) -> None:
        if not self.url:
            await _store_in_thread([event])
            return
        await async_client(self.url).xadd(STREAM, {"event": _encode(event)})

    def queue_append(self, pipe, event: UsageEvent) -> bool:
        """Queue the append (one XADD) on the caller's async pipeline and return True; False
        without Redis (the embedded default), where the caller records it otherwise."""
        if not self.url:
            return False
        pipe.xadd(STREAM, {"event": _encode(event)})
        return True


_store_in_thread = in_db_thread(lambda events: ledger_store(events))


def _encode(event: UsageEvent) -> bytes:
    return orjson.dumps(event)  # a dataclass: orjson writes its fields as an object


def _decode(raw: bytes) -> UsageEvent:
    return UsageEvent(**orjson.loads(raw))


def _ensure_group(client) -> None:
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


# The recorders fed after the ledger, made once per process for the USAGE_RECORDERS they are of.
_after_ledger: tuple[tuple[str, ...], list] = ((), [])


def _forward(events: list[UsageEvent]) -> set[str]:
    """Hand stored events to the recorders fed after the ledger (USAGE_RECORDERS' Kafka);
    return the request ids every one of them took (all, when there are none)."""
    global _after_ledger
    named = tuple(settings.USAGE_RECORDERS)
    if _after_ledger[0] != named:
        _after_ledger = (named, recorders_after_ledger())
    taken = {e.request_id for e in events}
    for recorder in _after_ledger[1]:
        try:
            taken &= recorder.record_many(events)
        except Exception:  # any failure: the entries stay pending and are retried
            metrics.USAGE_FORWARD_FAILURES.labels(recorder=type(recorder).__name__).inc(len(events))
            logger.exception("usage recorder %s failed; retried", type(recorder).__name__)
            return set()
    return taken


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
        decoded = [(entry_id, _decode(fields[b"event"]) if fields else None)
                   for entry_id, fields in entries]  # fmt: skip
        events = [e for _id, e in decoded if e is not None]
        _crash_if("before_commit")
        result = ledger_store(events)
        _crash_if("after_commit")
        taken = _forward([e for e in events if e.request_id in result.kept])
        # An entry stays pending (read again first by the next drain, stored as a duplicate)
        # until every recorder fed after the ledger has taken its event.
        ids = [
            entry_id
            for entry_id, e in decoded
            if e is None or e.request_id not in result.kept or e.request_id in taken
        ]
        if ids:
            client.xack(STREAM, GROUP, *ids)
            client.xdel(STREAM, *ids)
        stored += result.stored
        if len(ids) < len(decoded):
            break  # a recorder is failing: the next drain retries, after its pause
    client.set(LAST_DRAIN, repr(time.time()))
    return stored
