"""The operator's basic admin: quotas validated as everywhere, keys read-only but for revoke."""

import pytest
from django.contrib.auth import get_user_model

from tenants.models import ApiKey, Tenant
from tests.conftest import tenant_admin_form


@pytest.fixture
def operator(db):
    return get_user_model().objects.create_superuser("op", "op@example.com", "pw-op-123")


@pytest.fixture
def admin_client(client, operator):
    client.force_login(operator)
    return client


def test_admin_creates_a_tenant(admin_client):
    response = admin_client.post("/admin/tenants/tenant/add/", tenant_admin_form())

    assert response.status_code == 302
    assert Tenant.objects.get(slug="initech").max_tokens_per_minute == 1000


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_concurrent_requests", "0", "Max concurrent requests must be at least 1."),
        ("model_allow_list", '["a", "a"]', "Model allow list names &#x27;a&#x27; twice."),
        ("monthly_budget", "-5", "Monthly budget cannot be negative."),
    ],
)
def test_admin_shows_validation_errors_and_saves_nothing(admin_client, field, value, message):
    response = admin_client.post("/admin/tenants/tenant/add/", tenant_admin_form(**{field: value}))

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Tenant.objects.exists()


def test_admin_revokes_keys_and_never_shows_a_secret(admin_client, acme_key):
    page = admin_client.get(f"/admin/tenants/apikey/{acme_key.api_key.pk}/change/")
    assert page.status_code == 200
    assert acme_key.plaintext not in page.content.decode()
    assert acme_key.api_key.digest not in page.content.decode()
    assert admin_client.get("/admin/tenants/apikey/add/").status_code == 403

    response = admin_client.post(
        "/admin/tenants/apikey/",
        {"action": "revoke", "_selected_action": [acme_key.api_key.pk]},
    )

    assert response.status_code == 302
    acme_key.api_key.refresh_from_db()
    assert acme_key.api_key.state == ApiKey.State.REVOKED


def test_admin_suspend_action(admin_client, acme):
    admin_client.post(
        "/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [acme.pk]}
    )

    acme.refresh_from_db()
    assert acme.status == Tenant.Status.SUSPENDED
