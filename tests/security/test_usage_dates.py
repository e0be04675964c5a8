"""Dates at the ends of the calendar in the portal's usage page and CSV: a form error, not a 500
(9999-12-31 used to overflow computing the period's end)."""

import httpx
import pytest
from django.contrib.auth import get_user_model

from tenants import services
from tenants.models import Membership
from tests.security.conftest import post_form


@pytest.fixture
def signed_in(gateway, transactional_db):
    tenant = services.tenant_register(slug="acme", name="Acme")
    user = get_user_model().objects.create_user("ann", "ann@example.com", "ann-pass-1234")
    services.membership_set(tenant=tenant, user=user, role=Membership.Role.OWNER)
    with httpx.Client(base_url=gateway.url) as client:
        post_form(client, "/portal/login/", {"username": "ann", "password": "ann-pass-1234"})
        yield client


@pytest.mark.parametrize("path", ["/portal/usage.csv", "/portal/usage/"])
@pytest.mark.parametrize(
    ("start", "end"),
    [("9999-12-31", "9999-12-31"), ("9999-12-30", "9999-12-31"), ("0001-01-01", "0001-01-02"),
     ("2026-01-01", "9999-12-31")],
)  # fmt: skip
def test_far_dates_are_a_form_error(signed_in, path, start, end):
    response = signed_in.get(path, params={"start": start, "end": end})

    assert response.status_code == 400
    assert "Pick a day from 2000-01-01 to 2099-12-31." in response.text


def test_a_period_inside_the_bounds_still_downloads(signed_in):
    period = {"start": "2099-12-01", "end": "2099-12-31"}

    response = signed_in.get("/portal/usage.csv", params=period)

    assert response.status_code == 200
    assert response.text.startswith("request_id,occurred_at,model")


@pytest.mark.parametrize(
    ("start", "end", "status"),
    [("9999-12-31T00:00:00Z", "9999-12-31T23:59:59Z", 200),
     ("0001-01-01T00:00:00+01:00", "2026-01-01T00:00:00Z", 400)],
)  # fmt: skip
def test_the_api_takes_far_dates_without_a_500(gateway, transactional_db, start, end, status):
    tenant = services.tenant_register(slug="acme", name="Acme")
    key = services.apikey_issue(tenant=tenant, name="ci").plaintext
    response = httpx.get(f"{gateway.url}/api/usage.csv", params={"start": start, "end": end},
                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip

    assert response.status_code == status
    if status == 200:
        assert response.text.startswith("request_id,")  # an empty period, not an error
