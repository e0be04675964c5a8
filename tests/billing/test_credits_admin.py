"""Credits in the operator's admin: the grant form validates as the CLI does, the credit ledger
is read-only, and a tenant's prepaid setting is edited with its quotas."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from billing import spend
from billing.models import CreditEntry
from tests.conftest import tenant_admin_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("op", "op@example.com", "pw-1"))
    return client


def test_staff_grant_credits_in_the_admin(admin_client, acme):
    expires = (datetime.now(tz=UTC).date() + timedelta(days=7)).isoformat()
    form = {"tenant": acme.pk, "amount": "20.00", "reason": "annual plan", "expires": expires}

    response = admin_client.post("/admin/billing/creditentry/add/", form)

    assert response.status_code == 302, response.content.decode()[:2000]
    grant = CreditEntry.objects.get()
    assert (grant.kind, grant.amount, grant.actor) == ("grant", Decimal("20.00"), "op")
    assert spend.counter_get(spend.credit_granted_key(acme.pk)) == 20 * 10**12
    listing = admin_client.get("/admin/billing/creditentry/")
    assert listing.status_code == 200
    assert "annual plan" in listing.content.decode()
    page = admin_client.get(f"/admin/billing/creditentry/{grant.pk}/change/")
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    posted = admin_client.post(f"/admin/billing/creditentry/{grant.pk}/change/", {"amount": "1"})
    deleted = admin_client.post(f"/admin/billing/creditentry/{grant.pk}/delete/", {"post": "yes"})
    assert (posted.status_code, deleted.status_code) == (403, 403)
    assert CreditEntry.objects.get().amount == Decimal("20.00")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"amount": "-3"}, "amount", "Amount must be more than 0."),
        ({"expires": "2020-01-01"}, "expires", "The expiry is in the past."),
        ({"reason": ""}, "reason", "This field is required."),
    ],
)
def test_a_bad_grant_is_a_form_error(admin_client, acme, changes, field, message):
    form = {"tenant": acme.pk, "amount": "5", "reason": "r", "expires": "", **changes}

    response = admin_client.post("/admin/billing/creditentry/add/", form)

    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors[field])
    assert not CreditEntry.objects.exists()


def test_the_tenant_form_sets_prepaid(admin_client, acme):
    form = tenant_admin_form(slug="acme", name="Acme Corp", prepaid="on")

    response = admin_client.post(f"/admin/tenants/tenant/{acme.pk}/change/", form)

    assert response.status_code == 302
    acme.refresh_from_db()
    assert acme.prepaid is True
    page = admin_client.get(f"/admin/tenants/tenant/{acme.pk}/change/").content.decode()
    assert "Prepaid credits: 0.00 USD left of 0.00 granted (prepaid)." in page
