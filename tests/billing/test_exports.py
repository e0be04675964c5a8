"""Invoice exports (CSV, JSON, PDF) agree with each other and with the invoice; the usage CSV
streams exactly the tenant's rows of a range."""

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from pypdf import PdfReader

from billing import exports
from billing.invoices import invoice_close, invoice_for
from billing.ledger import ledger_store
from billing.models import UsageRecord
from billing.pricing import price_set
from tests.billing import factories

MARCH = date(2025, 3, 1)
INVOICE_HEADER = [
    "invoice_number",
    "status",
    "tenant",
    "period",
    "currency",
    "line_kind",
    "model",
    "requests",
    "input_tokens",
    "output_tokens",
    "input_price_per_million",
    "output_price_per_million",
    "amount",
    "credits_applied",
    "amount_due",
]
USAGE_HEADER = [
    "request_id",
    "occurred_at",
    "model",
    "api_key_prefix",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "usage_source",
    "amount",
    "currency",
    "cached_tokens",
    "cached_amount",
]


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def event(tenant, request_id, model, prompt, completion, when, *, source="reported"):
    return factories.event(tenant, model=model, prompt=prompt, completion=completion, at=when,
                           request_id=request_id, usage_source=source)  # fmt: skip


@pytest.fixture
def prices(db):
    since = at(2020, 1, 1)
    price_set(
        model_id="llama-3-8b",
        input_per_million=Decimal("0.15"),
        output_per_million=Decimal("0.60"),
        effective_from=since,
    )
    price_set(
        model_id="mistral-7b",
        input_per_million=Decimal("0.10"),
        output_per_million=Decimal("0.25"),
        effective_from=since,
    )


@pytest.fixture
def march_usage(acme, globex, prices):
    """acme: two llama requests and one mistral request in March, one late llama request from
    February (an adjustment line), one in April (not on March's invoice); globex: its own."""
    ledger_store(
        [
            event(acme, "a-1", "llama-3-8b", 1_000_000, 500_000, at(2025, 3, 2, 10)),
            event(acme, "a-2", "llama-3-8b", 3_000_000, 1_500_000, at(2025, 3, 31, 23, 59, 59)),
            event(acme, "a-3", "mistral-7b", 1_234_567, 765_433, at(2025, 3, 15), source="counted"),
            event(acme, "a-feb", "llama-3-8b", 1_000_000, 0, at(2025, 2, 27)),
            event(acme, "a-apr", "llama-3-8b", 9_000_000, 9_000_000, at(2025, 4, 1)),
            event(globex, "g-1", "globex-secret-model", 7_000_000, 7_000_000, at(2025, 3, 3)),
        ]
    )


def read_csv(body: bytes) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(body.decode()))
    return list(reader.fieldnames or []), list(reader)


def pdf_text(body: bytes) -> str:
    assert body.startswith(b"%PDF-")
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(body)).pages)


def test_final_invoice_exports_agree_with_the_invoice_and_each_other(acme, march_usage, settings):
    settings.BILLING_OPERATOR_NAME = "Tensor Works GmbH"
    settings.BILLING_OPERATOR_ADDRESS = "Hauptstrasse 1\n10115 Berlin"
    invoice_close(tenant=acme, period=MARCH)
    data = invoice_for(acme, MARCH)

    header, rows = read_csv(exports.invoice_csv(data))
    document = json.loads(exports.invoice_json(data))
    text = pdf_text(exports.invoice_pdf(data))

    # The invoice itself, worked out by hand: llama 4M in x 0.15 + 2M out x 0.60 = 1.80;
    # mistral 0.1234567 + 0.19135825 = 0.31 (rounded once); February's late 1M in = 0.15.
    assert data.status == "final"
    assert data.number.startswith("INV-")
    assert data.total == Decimal("2.26")
    expected = {
        ("usage", "llama-3-8b"): (2, 4_000_000, 2_000_000, "1.80"),
        ("usage", "mistral-7b"): (1, 1_234_567, 765_433, "0.31"),
        ("adjustment", "llama-3-8b"): (1, 1_000_000, 0, "0.15"),
    }

    assert header == INVOICE_HEADER
    assert len(rows) == len(data.lines) == 3
    for row, line in zip(rows, data.lines, strict=True):
        assert row["invoice_number"] == data.number
        assert (row["status"], row["tenant"], row["period"], row["currency"]) == (
            "final",
            "acme",
            "2025-03",
            "USD",
        )
        assert (row["line_kind"], row["model"]) == (line.kind, line.model_id)
        assert row["amount"] == str(line.amount)  # the exact Decimal string, no float
        assert row["input_price_per_million"] == str(line.input_per_million)
        assert expected[(row["line_kind"], row["model"])] == (
            int(row["requests"]),
            int(row["input_tokens"]),
            int(row["output_tokens"]),
            row["amount"],
        )
    assert sum(Decimal(row["amount"]) for row in rows) == data.total

    invoice = document["invoice"]
    assert invoice == {
        "number": data.number,
        "status": "final",
        "tenant": "acme",
        "tenant_name": "Acme Corp",
        "period": "2025-03",
        "currency": "USD",
        "total": "2.26",
        "credits_applied": "0.00",
        "amount_due": "2.26",
        "finalized_at": data.finalized_at.isoformat().replace("+00:00", "Z"),
        "issuer": {"name": "Tensor Works GmbH", "address": "Hauptstrasse 1\n10115 Berlin"},
    }
    assert [{"kind": r["line_kind"], **{k: r[k] for k in INVOICE_HEADER[6:13]}} for r in rows] == [
        {k: str(v) for k, v in line.items()} for line in document["lines"]
    ]
    assert all(isinstance(line["amount"], str) for line in document["lines"])

    for shown in (
        data.number,
        "Acme Corp",
        "acme",
        "2025-03",
        "Tensor Works GmbH",
        "10115 Berlin",
        "INVOICE",
        "Total due: 2.26 USD",
        "llama-3-8b",
        "mistral-7b",
        "4,000,000",
        "1,234,567",
        "765,433",
        "1.80",
        "0.31",
        "0.15",
    ):
        assert shown in text, shown
    assert f"{data.finalized_at:%Y-%m-%d}" in text
    assert "DRAFT" not in text
    # Nothing of the other tenant, nor of April, on any of them.
    for body in (exports.invoice_csv(data), exports.invoice_json(data)):
        assert b"globex" not in body
        assert b"9000000" not in body
    assert "globex" not in text

    assert exports.export_filename(data, "pdf") == f"acme-2025-03-{data.number}.pdf"


def test_a_draft_says_so_in_every_format(acme, march_usage):
    data = invoice_for(acme, MARCH)  # not closed: a draft

    _header, rows = read_csv(exports.invoice_csv(data))
    document = json.loads(exports.invoice_json(data))
    text = pdf_text(exports.invoice_pdf(data))

    assert data.status == "draft"
    assert {row["status"] for row in rows} == {"draft"}
    assert {row["invoice_number"] for row in rows} == {""}
    assert sum(Decimal(row["amount"]) for row in rows) == data.total == Decimal("2.26")
    assert document["invoice"]["status"] == "draft"
    assert document["invoice"]["number"] is None
    assert document["invoice"]["finalized_at"] is None
    assert "DRAFT — not an invoice" in text
    assert "INV-" not in text
    assert "2.26" in text
    assert exports.export_filename(data, "csv") == "acme-2025-03-draft.csv"


def test_an_empty_draft_before_the_tenant_existed(acme, march_usage):
    data = invoice_for(acme, date(1999, 1, 1))

    header, rows = read_csv(exports.invoice_csv(data))
    document = json.loads(exports.invoice_json(data))
    text = pdf_text(exports.invoice_pdf(data))

    assert (header, rows) == (INVOICE_HEADER, [])
    assert document["lines"] == []
    assert document["invoice"]["total"] == "0.00"
    assert "No usage in this period." in text
    assert "DRAFT" in text


def test_export_filename_refuses_an_unknown_format(acme):
    with pytest.raises(ValueError, match="format"):
        exports.export_filename(invoice_for(acme, MARCH), "xml")


def test_usage_csv_streams_the_range_in_time_order_and_nothing_else(acme, march_usage):
    chunks = list(exports.usage_csv_rows(acme, at(2025, 3, 1), at(2025, 4, 1)))

    assert chunks[0] == ",".join(USAGE_HEADER).encode() + b"\r\n"  # the header comes alone
    header, rows = read_csv(b"".join(chunks))
    assert header == USAGE_HEADER
    # February and April are outside [start, end); globex's row is not acme's.
    assert [row["request_id"] for row in rows] == ["a-1", "a-3", "a-2"]
    stored = UsageRecord.objects.get(request_id="a-3")
    assert rows[1] == {
        "request_id": "a-3",
        "occurred_at": "2025-03-15T00:00:00Z",
        "model": "mistral-7b",
        "api_key_prefix": "sk-AbC12345",
        "prompt_tokens": "1234567",
        "completion_tokens": "765433",
        "status": "200",
        "usage_source": "counted",
        "amount": str(stored.amount),
        "currency": "USD",
        "cached_tokens": "0",
        "cached_amount": "0.000000000000",
    }
    assert rows[1]["amount"] == "0.314814950000"  # exact, 12 places, not rounded
    assert rows[0]["usage_source"] == "reported"


def test_usage_csv_bounds_are_start_inclusive_end_exclusive(acme, march_usage):
    rows = read_csv(b"".join(exports.usage_csv_rows(acme, at(2025, 3, 2, 10), at(2025, 3, 15))))[1]

    assert [row["request_id"] for row in rows] == ["a-1"]


def test_usage_csv_streams_many_rows_in_several_chunks(acme, prices):
    start = at(2025, 6, 1)
    ledger_store(
        [
            event(acme, f"bulk-{i:05d}", "llama-3-8b", i, 1, start + timedelta(seconds=i))
            for i in range(4500)
        ]
    )

    chunks = list(exports.usage_csv_rows(acme, start, start + timedelta(days=1)))

    rows = read_csv(b"".join(chunks))[1]
    assert len(chunks) > 2  # streamed in pieces, not one body
    assert [row["request_id"] for row in rows] == [f"bulk-{i:05d}" for i in range(4500)]


def test_usage_csv_refuses_naive_or_reversed_bounds(acme):
    with pytest.raises(ValueError, match="time zone"):
        exports.usage_csv_rows(acme, datetime(2025, 3, 1), at(2025, 4, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="after start"):
        exports.usage_csv_rows(acme, at(2025, 4, 1), at(2025, 3, 1))
