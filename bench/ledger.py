"""The ledger's rates, in a database of its own (`saas_bench_ledger`): run by bench.run as

    DATABASE_URL=... python -m bench.ledger EVENTS ROWS TENANTS

1. Invoice close for a month of ROWS usage rows across TENANTS tenants: the rows are generated
   inside PostgreSQL (INSERT ... SELECT generate_series, with the ledger's indexes dropped and
   built afterwards, as a bulk load is done; no Python producer to wait on) and kept between
   runs; then `invoices_close_due` closes every tenant's month, timed, with the peak memory of
   this process above its resting size.
2. Ingest: EVENTS usage events appended to the Redis stream (as gateways do), then drained into
   PostgreSQL by `ledger_drain`, the ledger worker's own code: events stored per second.

Prints one JSON object.
"""

import contextlib
import json
import os
import resource
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal


@contextlib.contextmanager
def _unguarded():
    """Let this session clear bench data the ledger's append-only triggers protect (the bench
    database only; PostgreSQL's replica role skips ordinary triggers)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            yield cursor
        finally:
            cursor.execute("SET session_replication_role = origin")


def _rss_kib() -> int:
    for line in open("/proc/self/status"):  # noqa: SIM115 - a tiny proc file
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _tenants(count: int) -> list[int]:
    from tenants.models import Tenant

    slugs = [f"ledger-{index:05d}" for index in range(count)]
    existing = set(Tenant.objects.filter(slug__in=slugs).values_list("slug", flat=True))
    Tenant.objects.bulk_create(Tenant(slug=s, name=s) for s in slugs if s not in existing)
    return list(Tenant.objects.filter(slug__in=slugs).order_by("pk").values_list("pk", flat=True))


def _month_rows(period: date, rows: int, tenant_ids: list[int], price_id: int) -> float:
    """Make sure the month holds exactly `rows` generated rows; seconds spent generating."""
    from django.db import connection, transaction

    from billing.models import UsageRecord

    table = UsageRecord._meta.db_table
    end = date(period.year + period.month // 12, period.month % 12 + 1, 1)
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    end = datetime(end.year, end.month, 1, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table} WHERE occurred_at < %s", [end])  # noqa: S608
        if cursor.fetchone()[0] == rows:
            return 0.0
    started = time.perf_counter()
    # One transaction: a failure half-way leaves the table and its indexes as they were.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(f"TRUNCATE {table} CASCADE")
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s "
            "AND indexname NOT LIKE '%%pkey'",
            [table],
        )
        indexes = cursor.fetchall()
        for name, _definition in indexes:
            cursor.execute(
                f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}; DROP INDEX IF EXISTS {name}"
            )
        seconds = int((end - start).total_seconds())
        cursor.execute(  # the table's name from the model; values are parameters
            f"""INSERT INTO {table} (request_id, tenant_id, api_key_prefix, model_id,
                prompt_tokens, completion_tokens, occurred_at, recorded_at, latency_ms, status,
                counted, price_id, amount, currency)
            SELECT 'gen_' || g, (%s::bigint[])[1 + g %% %s], 'sk-bench', 'm' || (g %% 3),
                   100 + g %% 50, 20 + g %% 30,
                   %s::timestamptz + make_interval(secs => (g::bigint * %s) / %s),
                   now(), 50, 200, false, %s,
                   ((100 + g %% 50) * 0.5 + (20 + g %% 30) * 1.5) / 1000000, 'USD'
            FROM generate_series(0, %s - 1) AS g""",  # noqa: S608
            [tenant_ids, len(tenant_ids), start, seconds, rows, price_id, rows],
        )
        for name, definition in indexes:
            if "UNIQUE" in definition and "request_id" in definition:
                cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE (request_id)")
            else:
                cursor.execute(definition)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - started


def _invoice_close(period: date) -> dict:
    from django.conf import settings

    from billing.invoices import invoices_close_due
    from billing.models import Invoice, InvoiceLine

    with _unguarded():
        InvoiceLine.objects.all().delete()
        Invoice.objects.all().delete()
    resting = _rss_kib()
    now = datetime(period.year + period.month // 12, period.month % 12 + 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    result = invoices_close_due(now=now + timedelta(days=settings.INVOICE_GRACE_DAYS, hours=1))
    closed = result.finalized if result else []
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"invoices": len(closed), "close_seconds": elapsed, "resting_mib": resting / 1024,
            "peak_above_resting_mib": max(0, peak - resting) / 1024}  # fmt: skip


def _ingest(events: int, tenant_ids: list[int]) -> dict:
    from billing import ledger
    from billing.usage import UsageEvent

    client = ledger._redis()
    client.delete(ledger.STREAM)
    now = int(time.time())
    pipe = client.pipeline(transaction=False)
    for index in range(events):
        event = UsageEvent(request_id=f"req_{uuid.uuid4().hex}",
                           tenant_id=str(tenant_ids[index % len(tenant_ids)]),
                           api_key_prefix="sk-bench", model=f"m{index % 3}", prompt_tokens=100,
                           completion_tokens=20, timestamp=now, latency_ms=50, status=200,
                           usage_source="reported", endpoint="/v1/chat/completions")  # fmt: skip
        pipe.xadd(ledger.STREAM, {"event": ledger._encode(event)})
        if index % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    started = time.perf_counter()
    stored = ledger.ledger_drain(max_batches=10**9)
    elapsed = time.perf_counter() - started
    return {"events": events, "stored": stored, "ingest_per_s": stored / elapsed,
            "batch_size": ledger.settings.LEDGER_BATCH_SIZE}  # fmt: skip


def main(events: int, rows: int, tenants: int) -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas_platform.settings")
    import django

    django.setup()
    from django.db import connection

    from billing.models import UsageRecord
    from billing.pricing import price_set

    tenant_ids = _tenants(tenants)
    price = price_set(model_id="m0", input_per_million=Decimal("0.5"),
                      output_per_million=Decimal("1.5"),
                      effective_from=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    for model_id in ("m1", "m2"):
        price_set(model_id=model_id, input_per_million=Decimal("0.5"),
                  output_per_million=Decimal("1.5"),
                  effective_from=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    today = datetime.now(tz=UTC).date()
    this_month = today.replace(day=1)
    period = (this_month - timedelta(days=1)).replace(day=1)
    with _unguarded():
        UsageRecord.objects.filter(  # the last run's ingest
            occurred_at__gte=datetime(this_month.year, this_month.month, 1, tzinfo=UTC)
        ).delete()
        # A real ledger only grows; the deletes above leave dead rows that an invoice close
        # over the table would otherwise wade through (37.8 s after generating, 65 s after
        # a few runs' deletes). Vacuum, as autovacuum keeps an append-only table.
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {UsageRecord._meta.db_table}")
    generated = _month_rows(period, rows, tenant_ids, price.pk)
    result = {"rows": rows, "tenants": len(tenant_ids), "generate_seconds": generated}
    result |= _invoice_close(period)
    result |= _ingest(events, tenant_ids)
    return result


if __name__ == "__main__":
    print(json.dumps(main(*(int(value) for value in sys.argv[1:4]))))
