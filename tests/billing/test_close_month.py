"""Invoicing that one bad row cannot stop: closing a month handles each tenant in its own
transaction, a tenant that fails is recorded, shown on the admin's close page and retried, and
the others close, whether beat, the command or the admin closes it. The admin refuses a bad
price with the CLI's message."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from billing.invoices import invoices_close_due, invoices_close_month
from billing.models import Invoice, InvoiceCloseFailure, Price
from billing.pricing import price_set
from tenants import services
from tests.billing.factories import event, store

OCT = date(2026, 10, 1)


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("op", "op@example.com", "pw-1"))
    return client


@pytest.fixture
def bad_row(acme, globex):
    """Three tenants with October usage; globex's own price was saved as the admin used to
    save it, unchecked: a lowercase "usd", so its October is priced in "two currencies"."""
    initech = services.tenant_register(slug="initech", name="Initech")
    price_set(model_id="llama", input_per_million=Decimal(1), output_per_million=Decimal(2),
              effective_from=datetime(2026, 9, 1, tzinfo=UTC))  # fmt: skip
    Price.objects.create(model_id="llama", tenant=globex, currency="usd",
                         input_per_million=Decimal(1), output_per_million=Decimal(2),
                         effective_from=datetime(2026, 10, 15, tzinfo=UTC))  # fmt: skip
    for tenant in (acme, globex, initech):
        store(event(tenant, at=datetime(2026, 10, 5, tzinfo=UTC)),
              event(tenant, at=datetime(2026, 10, 20, tzinfo=UTC)))  # fmt: skip
    return globex


def test_a_bad_row_cannot_stop_the_other_tenants_invoices(bad_row):
    result = invoices_close_month(period=OCT)

    assert sorted(i.tenant.slug for i in result.finalized) == ["acme", "initech"]
    assert [(f.tenant.slug, f.message) for f in result.failures] == [
        ("globex", "usage is priced in several currencies: ['USD', 'usd']")
    ]
    failure = InvoiceCloseFailure.objects.get()
    assert (failure.tenant, failure.period, failure.attempts) == (bad_row, OCT, 1)
    assert not Invoice.objects.filter(tenant=bad_row).exists()  # nothing half-written

    # Beat's hourly close retries the tenant that failed, and only it.
    again = invoices_close_due(now=datetime(2026, 11, 5, tzinfo=UTC))

    assert again.finalized == []
    assert [f.tenant.slug for f in again.failures] == ["globex"]
    assert len(again.already) == 2
    assert InvoiceCloseFailure.objects.get().attempts == 2
    assert Invoice.objects.count() == 2


def test_a_tenant_that_closes_on_retry_clears_its_failure(acme):
    InvoiceCloseFailure.objects.create(tenant=acme, period=OCT, error="earlier failure")
    store(event(acme, at=datetime(2026, 10, 5, tzinfo=UTC)))

    result = invoices_close_month(period=OCT)

    assert [i.tenant for i in result.finalized] == [acme]
    assert not InvoiceCloseFailure.objects.exists()


def test_the_command_closes_the_others_and_exits_non_zero(bad_row, manage):
    closed = manage("invoices", "close", "--period", "2026-10")

    assert closed.returncode == 1
    assert [line.split()[1] for line in closed.stdout.splitlines()] == ["acme", "initech"]
    assert (
        closed.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "1 tenant(s) not closed for 2026-10: globex: usage is priced in several "
            "currencies: ['USD', 'usd']"
        )
    )
    assert Invoice.objects.count() == 2


def test_the_admin_close_page_closes_the_others_and_shows_the_failure(bad_row, admin_client):
    posted = admin_client.post("/admin/billing/invoice/close/", {"period": "2026-10"},
                               follow=True)  # fmt: skip
    page = admin_client.get("/admin/billing/invoice/close/?period=2026-10").content.decode()

    body = posted.content.decode()
    assert "Globex not closed: usage is priced in several currencies" in body  # capfirst
    assert "Finalized 2 invoice(s) for 2026-10" in body
    assert "Not closed (1 attempt, last" in page
    assert "Retried by the next close." in page
    assert Invoice.objects.count() == 2
    listed = admin_client.get("/admin/billing/invoiceclosefailure/").content.decode()
    assert "globex" in listed


def _price_form(**overrides) -> dict[str, str]:
    data = {"model_id": "llama", "tenant": "", "currency": "USD", "input_per_million": "1",
            "cached_input_per_million": "", "output_per_million": "2",
            "effective_from_0": "2026-12-01", "effective_from_1": "00:00:00"}  # fmt: skip
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("currency", "dollars", "Currency must be a three-letter ISO code, e.g. USD."),
        ("currency", "U$D", "Currency must be a three-letter ISO code, e.g. USD."),
        ("input_per_million", "-1", "Prices must be decimal amounts of 0 or more."),
        ("cached_input_per_million", "-0.5", "Prices must be decimal amounts of 0 or more."),
    ],
)
def test_the_admin_refuses_a_bad_price_with_the_cli_message(admin_client, field, value, message):
    response = admin_client.post("/admin/billing/price/add/", _price_form(**{field: value}))

    assert response.status_code == 200  # the form again, with the error
    assert message in response.content.decode()
    assert not Price.objects.exists()


def test_the_admin_stores_a_price_as_the_cli_does(admin_client):
    response = admin_client.post(
        "/admin/billing/price/add/",
        _price_form(currency="usd", cached_input_per_million="0.25"),
    )

    assert response.status_code == 302
    price = Price.objects.get()
    assert price.currency == "USD"  # as `price set --currency usd` stores it
    assert price.cached_input_per_million == Decimal("0.25")
