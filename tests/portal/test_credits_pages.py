"""The portal's credits page and the invoice's credits through Django's test client: owners and
members of the tenant see its balance, grants and draw-downs; nobody sees another tenant's."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing import credits
from billing.pricing import price_set
from tests.billing.factories import event, store
from tests.portal.conftest import sign_in_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme_credits(acme, globex):
    price_set(model_id="llama", input_per_million=Decimal(1000), output_per_million=Decimal(0),
              effective_from=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    expires = datetime.now(tz=UTC).date() + timedelta(days=20)
    credits.credits_grant(tenant=acme, amount=Decimal("3.00"), reason="Launch offer",
                          expires=expires)  # fmt: skip
    credits.credits_grant(tenant=globex, amount=Decimal("99.00"), reason="Globex secret deal")
    store(*[event(acme) for _ in range(4)])  # 4.00 of usage: 3.00 drawn, 1.00 left to pay
    return expires


@pytest.mark.parametrize("who", ["alice", "bob"])  # the owner and a member
def test_members_see_the_balance_grants_and_draw_downs(client, request, acme, acme_credits, who):
    sign_in_client(client, request.getfixturevalue(who), acme)

    page = client.get("/portal/credits/").content.decode()

    assert "0.00 USD</strong>" in page  # balance
    assert "3.00 granted, 4.00 used" not in page
    assert "3.00 granted, 3.00 used, 0.00 expired" in page
    assert "Launch offer" in page
    assert f"{acme_credits + timedelta(days=1):%Y-%m-%d} 00:00 UTC" in page
    assert "3.000000 USD" in page  # the draw-down
    assert "Globex secret deal" not in page


def test_another_tenants_member_sees_only_their_own(client, charlie, acme_credits, globex):
    sign_in_client(client, charlie, globex)

    page = client.get("/portal/credits/").content.decode()

    assert "99.00 USD</strong>" in page
    assert "Launch offer" not in page
    assert "Nothing drawn from your credits yet." in page


def test_the_invoice_page_shows_usage_credits_applied_and_amount_due(client, alice, acme_credits):
    sign_in_client(client, alice)

    page = client.get("/portal/invoices/current/").content.decode()

    assert "Prepaid credits applied" in page
    assert "\N{MINUS SIGN}3.00 USD" in page
    assert "<strong>1.00 USD</strong>" in page  # the amount due
    assert "4.00 USD" in page  # the usage
    listing = client.get("/portal/invoices/").content.decode()
    assert "3.00 of it paid by prepaid credits, <strong>1.00 USD</strong> due" in listing


def test_anonymous_visitors_are_sent_to_sign_in(client):
    response = client.get("/portal/credits/")
    assert response.status_code == 302
    assert response["Location"].startswith("/portal/login/?next=/portal/credits/")
