"""Invoices in the admin: a month closed (finalized) per tenant or for all, exported as CSV,
PDF and JSON through billing.exports, corrected by credit notes; lists in fixed queries."""

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

from billing.invoices import invoice_close
from billing.models import CreditNote, Invoice
from tests.billing.factories import event, store

OCTOBER = datetime(2026, 10, 5, tzinfo=UTC)


def test_close_a_month_for_one_tenant_then_for_all(admin_client, acme, globex, llama_price):
    store(event(acme, at=OCTOBER), event(globex, at=OCTOBER, prompt=2000))

    page = admin_client.get("/admin/billing/invoice/close/?period=2026-10").content.decode()
    assert "42.00" in page  # acme's draft, estimated from the rollups
    assert "Finalize acme" in page

    one = admin_client.post(
        "/admin/billing/invoice/close/", {"period": "2026-10", "tenant": acme.pk}, follow=True
    )

    invoice = Invoice.objects.get(tenant=acme)
    assert invoice.total == Decimal("42.00")
    assert f"Finalized 1 invoice(s) for 2026-10: {invoice.number}" in one.content.decode()
    assert not Invoice.objects.filter(tenant=globex).exists()

    admin_client.post("/admin/billing/invoice/close/", {"period": "2026-10"})

    assert Invoice.objects.get(tenant=globex).total == Decimal("70.00")
    assert Invoice.objects.count() == 2  # acme's was not closed twice


def test_a_month_that_has_not_ended_is_not_closed(admin_client, acme):
    response = admin_client.post(
        "/admin/billing/invoice/close/", {"period": "2099-01"}, follow=True
    )

    assert "2099-01 has not ended yet" in response.content.decode()
    assert not Invoice.objects.exists()


def test_exports_of_a_final_invoice_and_a_draft(admin_client, acme, llama_price):
    store(event(acme, at=OCTOBER))
    invoice = invoice_close(tenant=acme, period=OCTOBER.date().replace(day=1))
    base = f"/admin/billing/invoice/export/{acme.pk}"

    final_csv = admin_client.get(f"{base}/2026-10.csv")
    final_json = admin_client.get(f"{base}/2026-10.json")
    final_pdf = admin_client.get(f"{base}/2026-10.pdf")
    draft_csv = admin_client.get(f"{base}/2026-11.csv")

    rows = list(csv.DictReader(io.StringIO(final_csv.content.decode())))
    assert rows[0]["invoice_number"] == invoice.number
    assert rows[0]["amount"] == "42.00"
    assert f"acme-2026-10-{invoice.number}.csv" in final_csv["Content-Disposition"]
    assert json.loads(final_json.content)["invoice"]["total"] == "42.00"
    assert final_pdf.content.startswith(b"%PDF")
    assert "acme-2026-11-draft.csv" in draft_csv["Content-Disposition"]
    assert admin_client.get(f"{base}/2026-10.xml").status_code == 404
    page = admin_client.get("/admin/billing/invoice/").content.decode()
    assert f'href="{base}/2026-10.pdf"' in page


def test_credit_notes_from_the_invoice_page(admin_client, acme, llama_price):
    store(event(acme, at=OCTOBER))
    invoice = invoice_close(tenant=acme, period=OCTOBER.date().replace(day=1))
    url = f"/admin/billing/invoice/{invoice.pk}/credit/"

    issued = admin_client.post(url, {"amount": "12.50", "reason": "outage"}, follow=True)
    too_much = admin_client.post(url, {"amount": "30", "reason": "again"}, follow=True)
    not_a_number = admin_client.post(url, {"amount": "NaN", "reason": "x"}, follow=True)

    note = CreditNote.objects.get()
    assert note.amount == Decimal("12.50")
    assert f"Credit note {note.number} issued" in issued.content.decode()
    assert "at most 29.50" in too_much.content.decode()
    assert "must be a number" in not_a_number.content.decode()
    assert CreditNote.objects.count() == 1
    page = admin_client.get(f"/admin/billing/invoice/{invoice.pk}/change/").content.decode()
    assert note.number in page
    assert "Up to 29.50 USD can still be credited" in page


def test_invoice_and_ledger_lists_cost_fixed_queries(
    admin_client, llama_price, django_assert_max_num_queries
):
    from tenants import services

    for n in range(12):
        tenant = services.tenant_register(slug=f"t{n}")
        store(event(tenant, at=OCTOBER), event(tenant, at=OCTOBER))
        invoice_close(tenant=tenant, period=OCTOBER.date().replace(day=1))

    with django_assert_max_num_queries(9):
        invoices = admin_client.get("/admin/billing/invoice/")
    with django_assert_max_num_queries(9):
        ledger = admin_client.get("/admin/billing/usagerecord/")
    with django_assert_max_num_queries(8):
        close = admin_client.get("/admin/billing/invoice/close/?period=2026-10")

    assert invoices.content.decode().count("INV-") >= 12
    assert ledger.status_code == 200
    assert close.content.decode().count("admin-badge-final") == 12
