"""A member of acme asking the portal for globex's objects gets 404 on every URL that takes
an id; the test fails when a portal URL is added without being listed here."""

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import get_resolver
from django.utils import timezone

from billing.invoices import invoice_close
from tenants import services
from tenants.invitations import invitation_create
from tenants.models import ApiKey, Invitation, Membership
from tests.billing.factories import event, store

pytestmark = pytest.mark.django_db

# Every portal URL: those without an object in the path are scoped by the session's tenant.
URLS_WITHOUT_OBJECTS = {
    "", "login/", "logout/", "tenants/", "password/change/", "password/change/done/",
    "password/reset/", "password/reset/sent/", "password/reset/<uidb64>/<token>/",
    "password/reset/complete/", "keys/", "usage/", "usage.csv", "invoices/", "members/",
    "credits/",
    "audit/",
    # Addressed by the emailed token, for whoever holds it (tests/security/test_invitations.py).
    "invitations/<str:token>/",
    # The tenant's one webhook endpoint, its secret, test event and alert thresholds: scoped by
    # the session's tenant (tests/portal/test_webhooks_pages.py).
    "webhooks/", "webhooks/roll/", "webhooks/test/", "webhooks/remove/", "webhooks/alerts/",
    # Single sign-on: the session's own state decides (tests/portal/test_sso_browser.py).
    "sso/login/", "sso/callback/",
}  # fmt: skip
URLS_WITH_OBJECTS = {
    "keys/<int:pk>/revoke/": ("POST", "key"),
    "keys/<int:pk>/rotate/": ("POST", "key"),
    "keys/<int:pk>/limits/": ("POST", "key"),
    "invoices/<str:ref>/": ("GET", "invoice"),
    "^invoices/(?P<ref>[^/]+)/(?P<fmt>pdf|csv|json)$": ("GET", "invoice-file"),
    "members/<int:pk>/role/": ("POST", "membership"),
    "members/<int:pk>/remove/": ("POST", "membership"),
    "members/invitations/<int:pk>/cancel/": ("POST", "invitation"),
}


def portal_patterns() -> set[str]:
    (portal,) = [p for p in get_resolver().url_patterns if str(p.pattern) == "portal/"]
    return {str(pattern.pattern) for pattern in portal.url_patterns}


def test_every_portal_url_is_listed_here():
    assert portal_patterns() == URLS_WITHOUT_OBJECTS | set(URLS_WITH_OBJECTS)


@pytest.fixture
def globex_objects(globex, charlie):
    key = services.apikey_issue(tenant=globex, name="globex prod").api_key
    last_month = (timezone.now().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    store(event(globex, at=datetime(last_month.year, last_month.month, 3, tzinfo=UTC)))
    invoice = invoice_close(tenant=globex, period=last_month)
    membership = Membership.objects.get(tenant=globex, user=charlie)
    invitation = invitation_create(tenant=globex, email="dave@example.com").invitation
    return {"key": key, "invoice": invoice, "membership": membership, "invitation": invitation}


def _paths(objects) -> list[tuple[str, str]]:
    key, invoice, member = objects["key"], objects["invoice"], objects["membership"]
    return [
        ("POST", f"/portal/keys/{key.pk}/revoke/"),
        ("POST", f"/portal/keys/{key.pk}/rotate/"),
        ("POST", f"/portal/keys/{key.pk}/limits/"),
        ("GET", f"/portal/invoices/{invoice.number}/"),
        ("GET", f"/portal/invoices/{invoice.number}/pdf"),
        ("GET", f"/portal/invoices/{invoice.number}/csv"),
        ("GET", f"/portal/invoices/{invoice.number}/json"),
        ("POST", f"/portal/members/{member.pk}/role/"),
        ("POST", f"/portal/members/{member.pk}/remove/"),
        ("POST", f"/portal/members/invitations/{objects['invitation'].pk}/cancel/"),
    ]


def test_another_tenants_objects_are_404_on_every_url(alice_client, acme, globex_objects):
    assert {kind for _, kind in URLS_WITH_OBJECTS.values()} == {
        "key", "invoice", "invoice-file", "membership", "invitation"}  # fmt: skip
    for method, path in _paths(globex_objects):
        data = {"role": "member"} if "role" in path else {}
        response = alice_client.generic(method, path, data=data) if method == "GET" else \
            alice_client.post(path, data)  # fmt: skip
        assert response.status_code == 404, (method, path, response.status_code)
    key = ApiKey.objects.get(pk=globex_objects["key"].pk)
    assert key.revoked_at is None
    assert key.replaced_by is None
    assert Membership.objects.get(pk=globex_objects["membership"].pk).role == "owner"
    assert Invitation.objects.filter(pk=globex_objects["invitation"].pk).exists()


def test_pages_never_show_another_tenants_objects(alice_client, acme, globex_objects):
    services.apikey_issue(tenant=acme, name="acme key")
    for path in ("/portal/", "/portal/keys/", "/portal/usage/", "/portal/invoices/",
                 "/portal/members/", "/portal/audit/"):  # fmt: skip
        body = alice_client.get(path).content.decode()
        assert globex_objects["key"].display_prefix not in body, path
        assert "globex prod" not in body, path
        assert globex_objects["invoice"].number not in body, path
        assert "charlie" not in body, path


def test_the_session_cannot_be_pointed_at_another_tenant(client, alice, acme, globex):
    client.force_login(alice)
    session = client.session
    session["portal_tenant_id"] = globex.pk  # as if tampered with
    session.save()
    body = client.get("/portal/").content.decode()
    assert "Acme Corp" in body
    assert "Globex" not in body


def test_anonymous_requests_to_object_urls_change_nothing(client, globex_objects):
    for method, path in _paths(globex_objects):
        response = client.generic(method, path)
        assert response.status_code in (302, 403), (method, path)
    assert ApiKey.objects.get(pk=globex_objects["key"].pk).revoked_at is None
