"""Invoices: totals equal their lines and the ledger, numbers have no gaps, late events land on
the next invoice, finalized invoices never change."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db import DatabaseError, transaction
from django.db.models import Sum

from billing import invoices
from billing.invoices import InvoiceError, credit_note_issue, invoice_close, invoice_for
from billing.models import Invoice, InvoiceLine, UsageRecord
from billing.pricing import price_set
from saas_platform import periods
from tests.billing.factories import event, store

SEPT, OCT, NOV = date(2026, 9, 1), date(2026, 10, 1), date(2026, 11, 1)


def at(period: date, day: int = 10) -> datetime:
    return datetime(period.year, period.month, day, 12, tzinfo=UTC)


@pytest.fixture
def prices(db):
    price_set(model_id="llama", input_per_million=Decimal("0.333333"),
              output_per_million=Decimal("1.5"), effective_from=at(SEPT, 1))  # fmt: skip
    price_set(model_id="qwen", input_per_million=Decimal("2"), output_per_million=Decimal("4"),
              effective_from=at(SEPT, 1))  # fmt: skip
    price_set(model_id="llama", input_per_million=Decimal("0.5"),
              output_per_million=Decimal("2"), effective_from=at(OCT, 15))  # fmt: skip


def ledger_tokens(tenant, period):
    rows = UsageRecord.objects.filter(
        tenant=tenant,
        occurred_at__gte=at(period, 1).replace(hour=0),
        occurred_at__lt=at(periods.next_month(period), 1).replace(hour=0),
    )
    sums = rows.aggregate(inp=Sum("prompt_tokens"), out=Sum("completion_tokens"))
    return sums["inp"] or 0, sums["out"] or 0


def test_an_invoice_totals_its_lines_and_matches_the_ledger(acme, globex, prices):
    store(*[event(acme, model="llama", prompt=1234 + i, completion=77, at=at(OCT, 1 + i))
            for i in range(28)])  # fmt: skip
    store(event(acme, model="qwen", prompt=5, completion=7, at=at(OCT, 3)),
          event(globex, model="qwen", at=at(OCT, 4)))  # fmt: skip

    invoice = invoice_close(tenant=acme, period=OCT)

    lines = list(invoice.lines.all())
    assert invoice.total == sum(line.amount for line in lines)
    assert (
        sum(line.input_tokens for line in lines),
        sum(line.output_tokens for line in lines),
    ) == (ledger_tokens(acme, OCT))
    # llama changed price mid-month: one line per price, each rounded once
    assert sorted((line.model_id, line.input_per_million) for line in lines) == [
        ("llama", Decimal("0.333333")), ("llama", Decimal("0.5")), ("qwen", Decimal("2")),
    ]  # fmt: skip
    exact = sum(r.amount for r in UsageRecord.objects.filter(tenant=acme, model_id="qwen"))
    assert [line.amount for line in lines if line.model_id == "qwen"] == [
        exact.quantize(Decimal("0.01"))
    ]


def test_numbers_have_no_gaps_within_a_year_and_closing_twice_changes_nothing(acme, globex, prices):
    store(event(acme, at=at(OCT)), event(globex, at=at(OCT)))

    first = invoice_close(tenant=acme, period=OCT)
    again = invoice_close(tenant=acme, period=OCT)
    second = invoice_close(tenant=globex, period=OCT)

    assert first.pk == again.pk
    year = first.finalized_at.year
    assert [first.number, second.number] == [f"INV-{year}-000001", f"INV-{year}-000002"]


def test_late_events_go_on_the_next_invoice_as_an_adjustment(acme, prices):
    store(event(acme, at=at(SEPT)))
    september = invoice_close(tenant=acme, period=SEPT)
    late = event(acme, model="qwen", prompt=100, completion=100, at=at(SEPT, 28))
    store(late, event(acme, at=at(OCT)))

    october = invoice_close(tenant=acme, period=OCT)

    assert september.lines.filter(model_id="qwen").count() == 0
    adjustment = october.lines.get(kind=InvoiceLine.Kind.ADJUSTMENT)
    assert (adjustment.model_id, adjustment.input_tokens) == ("qwen", 100)
    usage = october.lines.filter(kind=InvoiceLine.Kind.USAGE)
    assert sum(line.input_tokens for line in usage) == ledger_tokens(acme, OCT)[0]
    # every ledger row is on exactly one invoice
    invoiced = sum(line.input_tokens for line in InvoiceLine.objects.filter(invoice__tenant=acme))
    assert (
        invoiced == UsageRecord.objects.filter(tenant=acme).aggregate(s=Sum("prompt_tokens"))["s"]
    )


def test_a_draft_follows_usage_until_the_month_is_closed(acme, prices):
    store(event(acme, at=at(OCT, 2)))
    before = invoice_for(acme, OCT)
    store(event(acme, at=at(OCT, 3)))
    after = invoice_for(acme, OCT)

    assert (before.status, before.number) == ("draft", None)
    assert after.input_tokens == before.input_tokens + 1000
    assert not Invoice.objects.exists()


def test_the_current_month_cannot_be_closed_nor_an_earlier_one_after_a_later(acme, prices):
    today = datetime.now(tz=UTC).date().replace(day=1)
    with pytest.raises(InvoiceError, match="has not ended"):
        invoice_close(tenant=acme, period=today)

    invoice_close(tenant=acme, period=OCT)
    with pytest.raises(InvoiceError, match="later month is already closed"):
        invoice_close(tenant=acme, period=SEPT)


def test_finalized_invoices_cannot_be_changed_only_credited(acme, prices):
    store(event(acme, prompt=10_000_000, at=at(OCT)))
    invoice = invoice_close(tenant=acme, period=OCT)

    for change in (
        lambda: Invoice.objects.filter(pk=invoice.pk).update(total=0),
        lambda: InvoiceLine.objects.filter(invoice=invoice).update(amount=0),
        lambda: Invoice.objects.filter(pk=invoice.pk).delete(),
    ):
        with pytest.raises(DatabaseError), transaction.atomic():
            change()
    invoice.refresh_from_db()
    assert invoice.total > 0

    note = credit_note_issue(invoice=invoice, amount=Decimal("1.00"), reason="goodwill")
    assert note.number == f"CN-{note.created_at.year}-000001"
    with pytest.raises(InvoiceError, match="at most"):
        credit_note_issue(invoice=invoice, amount=invoice.total, reason="too much")


def test_invoices_close_due_waits_for_the_grace_period(acme, globex, prices, settings):
    settings.INVOICE_GRACE_DAYS = 3
    store(event(acme, at=at(OCT)))

    assert invoices.invoices_close_due(now=datetime(2026, 11, 2, tzinfo=UTC)) is None
    closed = invoices.invoices_close_due(now=datetime(2026, 11, 4, tzinfo=UTC)).finalized

    assert sorted(i.tenant.slug for i in closed) == ["acme", "globex"]
    assert {i.period for i in closed} == {OCT}
    assert invoices.invoices_close_due(now=datetime(2026, 11, 5, tzinfo=UTC)).finalized == []
