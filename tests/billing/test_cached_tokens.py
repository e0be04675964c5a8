"""Cached input tokens: an engine that reports prompt-cache hits (usage.prompt_tokens_details.
cached_tokens, as vLLM and OpenAI) has them carried by the usage event, priced at the cached
input price in the ledger, shown as their own invoice line and in the usage CSV; streams too."""

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from django.conf import settings

from billing.exports import usage_csv_rows
from billing.invoices import invoice_for
from billing.ledger import ledger_drain
from billing.models import InvoiceLine, UsageRecord
from billing.pricing import price_set
from saas_platform.periods import month_range, month_start
from tests.billing.factories import event, store
from tests.gateway_server import fake_model, make_customer

HI = [{"role": "user", "content": "hi"}]
# The fake engine's 10 prompt tokens, 4 of them from its cache, and 3 completion tokens: at
# 1 per input token, 0.25 per cached one and 2 per output token, a request costs 6 + 1 + 6.
PER_TOKEN = Decimal(1_000_000)


def _price(model_id: str, *, cached: Decimal | None):
    return price_set(model_id=model_id, input_per_million=PER_TOKEN,
                     output_per_million=2 * PER_TOKEN, cached_input_per_million=cached,
                     effective_from=datetime.now(tz=UTC) - timedelta(days=1))  # fmt: skip


def test_cached_tokens_are_priced_apart_on_the_invoice_and_the_usage_csv(
    gateway, catalog, fake_upstream_url
):
    customer = make_customer(gateway, slug="cachy-co")
    model = fake_model(fake_upstream_url, "cachy", "chunks=3&cached=4")
    _price(model, cached=PER_TOKEN / 4)
    headers = {"Authorization": f"Bearer {customer.key}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
        plain = client.post("/v1/chat/completions", json={"model": model, "messages": HI})
        streamed = client.post("/v1/chat/completions", json={
            "model": model, "messages": HI, "stream": True,
            "stream_options": {"include_usage": True},
        })  # fmt: skip
    ids = [plain.headers["x-request-id"], streamed.headers["x-request-id"]]
    events = gateway.events_for(ids)
    if settings.REDIS_URL:  # the gateway appended them to the ledger's stream
        ledger_drain()

    assert plain.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]  # fmt: skip
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert sorted(e["cached_tokens"] for e in events) == [4, 4]
    rows = UsageRecord.objects.filter(request_id__in=ids)
    assert sorted((r.prompt_tokens, r.cached_tokens, r.amount) for r in rows) == [
        (10, 4, Decimal(13)), (10, 4, Decimal(13)),
    ]  # fmt: skip

    invoice = invoice_for(customer.tenant, month_start())
    lines = {line.kind: line for line in invoice.lines}
    assert set(lines) == {InvoiceLine.Kind.USAGE, InvoiceLine.Kind.CACHED}
    usage, cached = lines[InvoiceLine.Kind.USAGE], lines[InvoiceLine.Kind.CACHED]
    assert (usage.requests, usage.input_tokens, usage.output_tokens, usage.amount) == (
        2, 12, 6, Decimal("24.00"),
    )  # fmt: skip
    assert (cached.input_tokens, cached.input_per_million, cached.amount) == (
        8, PER_TOKEN / 4, Decimal("2.00"),
    )  # fmt: skip
    assert invoice.total == Decimal("26.00")

    start, end = month_range(month_start())
    text = b"".join(usage_csv_rows(customer.tenant, start, end)).decode()
    exported = list(csv.DictReader(io.StringIO(text)))
    assert [(r["cached_tokens"], Decimal(r["cached_amount"]), Decimal(r["amount"]))
            for r in exported] == [("4", Decimal(1), Decimal(13))] * 2  # fmt: skip


def test_without_a_cached_price_cached_tokens_cost_the_input_price(acme):
    _price("llama", cached=None)

    store(event(acme, prompt=10, completion=3, cached_tokens=4))

    record = UsageRecord.objects.get()
    assert (record.cached_tokens, record.amount) == (4, Decimal(16))
    invoice = invoice_for(acme, month_start())
    cached = next(line for line in invoice.lines if line.kind == InvoiceLine.Kind.CACHED)
    assert (cached.input_per_million, cached.amount) == (PER_TOKEN, Decimal("4.00"))
    assert invoice.total == Decimal("16.00")
