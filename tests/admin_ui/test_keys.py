"""API keys in the admin: prefix, name, tenant, dates and state; filtered by state; revoked
through the services; the secret and the digest never on a page."""

from datetime import timedelta

from django.utils import timezone

from tenants import services
from tenants.models import ApiKey


def test_keys_list_states_and_filters_them(admin_client, acme, globex):
    active = services.apikey_issue(tenant=acme, name="ci").api_key
    expired = services.apikey_issue(
        tenant=globex, name="old", expires_at=timezone.now() - timedelta(days=1)
    ).api_key
    revoked = services.apikey_revoke(api_key=services.apikey_issue(tenant=acme, name="x").api_key)

    page = admin_client.get("/admin/tenants/apikey/").content.decode()
    only_expired = admin_client.get("/admin/tenants/apikey/?state=expired").content.decode()
    only_active = admin_client.get("/admin/tenants/apikey/?state=active").content.decode()

    for key in (active, expired, revoked):
        assert key.display_prefix in page
        assert key.digest not in page
    assert "admin-badge-revoked" in page
    assert expired.display_prefix in only_expired
    assert active.display_prefix not in only_expired
    assert revoked.display_prefix not in only_expired
    assert active.display_prefix in only_active
    assert expired.display_prefix not in only_active


def test_keys_list_costs_the_same_queries_for_many_keys(
    admin_client, acme, globex, django_assert_max_num_queries
):
    for n in range(40):
        services.apikey_issue(tenant=acme if n % 2 else globex, name=f"k{n}")

    with django_assert_max_num_queries(9):  # the tenant filter lists tenants once
        response = admin_client.get("/admin/tenants/apikey/")

    assert response.status_code == 200


def test_revoke_action_goes_through_the_service(
    admin_client, acme_key, acme, django_capture_on_commit_callbacks
):
    assert services.tenant_for_key(acme_key.plaintext).api_key == acme_key.api_key
    other = services.apikey_issue(tenant=acme, name="other")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/tenants/apikey/",
            {"action": "revoke", "_selected_action": [acme_key.api_key.pk]},
            follow=True,
        )

    assert "Revoked 1 key(s)" in response.content.decode()
    assert ApiKey.objects.get(pk=acme_key.api_key.pk).state == ApiKey.State.REVOKED
    assert ApiKey.objects.get(pk=other.api_key.pk).state == ApiKey.State.ACTIVE  # untouched
    page = admin_client.get(f"/admin/tenants/apikey/{acme_key.api_key.pk}/change/")
    assert acme_key.plaintext not in page.content.decode()
    assert acme_key.api_key.digest not in page.content.decode()
