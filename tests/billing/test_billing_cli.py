"""The billing commands as scripts use them: exit codes, one-line errors, files written."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.models import CreditNote, Invoice, Price
from tests.billing.factories import event, store


def one_line_error(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_price_set_and_list(manage, acme):
    list_price = manage("price", "set", "llama", "--input-per-million", "0.20",
                        "--output-per-million", "0.60", "--from", "2026-10-01T00:00Z")  # fmt: skip
    own = manage("price", "set", "llama", "--input-per-million", "0.1", "--output-per-million",
                 "0.3", "--tenant", "acme", "--currency", "eur")  # fmt: skip

    assert list_price.returncode == 0, list_price.stderr
    assert own.returncode == 0, own.stderr
    first = Price.objects.get(tenant=None)
    assert (first.input_per_million, first.output_per_million, first.currency) == (
        Decimal("0.20"), Decimal("0.60"), "USD",
    )  # fmt: skip
    assert first.effective_from == datetime(2026, 10, 1, tzinfo=UTC)
    assert Price.objects.get(tenant=acme).currency == "EUR"
    listing = manage("price", "list").stdout
    assert "llama" in listing
    assert "acme" in listing


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input-per-million", "-1", "--output-per-million", "1"], "Prices must be decimal"),
        (["--input-per-million", "x", "--output-per-million", "1"], "invalid decimal amount"),
        (["--input-per-million", "1", "--output-per-million", "1", "--tenant", "nope"],
         "no tenant with slug 'nope'"),
        (["--input-per-million", "1", "--output-per-million", "1", "--from", "2026-10-01"],
         "needs a time zone"),
        (["--input-per-million", "1", "--output-per-million", "1", "--currency", "dollars"],
         "three-letter ISO code"),
    ],
)  # fmt: skip
def test_price_set_bad_input(manage, args, expected):
    assert expected in one_line_error(manage("price", "set", "llama", *args))
    assert not Price.objects.exists()


def test_invoices_close_list_and_credit(manage, acme, globex):
    store(event(acme, at=datetime(2026, 10, 5, tzinfo=UTC)))

    closed = manage("invoices", "close", "--period", "2026-10")

    assert closed.returncode == 0, closed.stderr
    assert Invoice.objects.filter(period="2026-10-01").count() == 2
    number = Invoice.objects.get(tenant=acme).number
    assert number in manage("invoices", "list").stdout
    assert manage("invoices", "close", "--period", "2026-10", "--tenant", "acme").returncode == 0
    assert Invoice.objects.count() == 2

    error = one_line_error(manage("invoices", "credit", number, "--amount", "5", "--reason", "x"))
    assert "at most 0.00" in error
    assert not CreditNote.objects.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["close", "--period", "2026-13"], "invalid period (YYYY-MM) value"),
        (["close", "--period", "2026-10", "--tenant", "nope"], "no tenant with slug 'nope'"),
        (["close", "--period", "2999-01"], "has not ended yet"),
        (["credit", "INV-1999-000001", "--amount", "1", "--reason", "x"], "no invoice numbered"),
    ],
)
def test_invoices_bad_input(manage, acme, args, expected):
    assert expected in one_line_error(manage("invoices", *args))
    assert not Invoice.objects.exists()


def test_invoices_export_writes_one_file_per_tenant_in_each_format(manage, acme, globex, tmp_path):
    store(event(acme, at=datetime(2026, 10, 5, tzinfo=UTC)))
    assert manage("invoices", "close", "--period", "2026-10", "--tenant", "acme").returncode == 0

    written = {}
    for fmt in ("csv", "json", "pdf"):
        result = manage("invoices", "export", "--period", "2026-10", "--format", fmt,
                        "--out", str(tmp_path / fmt))  # fmt: skip
        assert result.returncode == 0, result.stderr
        written[fmt] = sorted(p.name for p in (tmp_path / fmt).iterdir())

    number = Invoice.objects.get(tenant=acme).number
    assert written["csv"] == [f"acme-2026-10-{number}.csv", "globex-2026-10-draft.csv"]
    assert [n.rsplit(".", 1)[0] for n in written["pdf"]] == [
        n.rsplit(".", 1)[0] for n in written["json"]
    ]
    assert "draft" in (tmp_path / "json" / "globex-2026-10-draft.json").read_text()


def test_invoices_export_to_an_unwritable_place_is_one_line(manage, acme, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    result = manage("invoices", "export", "--period", "2026-10", "--format", "csv",
                    "--out", str(blocker / "sub"))  # fmt: skip

    assert "cannot write to" in one_line_error(result)
