"""Isolation: a tenant's key reaches its own tenant's data and nothing else (not another
tenant's invoices or usage, not the operator's admin), and a tenant's people are not operators.

Every management API URL is resolved through the key's tenant: no URL carries an object id, so
there is no other tenant's object to name. A period is a month, not an object: any tenant asking
for 2025-03 gets its own invoice for that month (an empty draft if it had no usage)."""

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.utils import timezone
from pypdf import PdfReader

from billing.invoices import invoice_close
from billing.models import Invoice
from tenants import services
from tenants.models import Tenant
from tests.billing import factories

MARCH = datetime(2025, 3, 1, tzinfo=UTC)
SECRETS = {
    "acme": ("acme-secret-model", "req_acme_private"),
    "globex": ("globex-secret-model", "req_globex_private"),
}


@pytest.fixture
def tenants_with_usage(transactional_db, gateway, acme, globex):
    """acme and globex each used a model only they know of, in March 2025 (closed) and this
    month (a draft); each has a key."""
    now = timezone.now().replace(day=1, hour=0, minute=0, second=1)
    for tenant in (acme, globex):
        model, request_id = SECRETS[tenant.slug]
        factories.store(
            factories.event(tenant, model=model, at=MARCH + timedelta(days=9),
                            request_id=f"{request_id}_march"),
            factories.event(tenant, model=model, at=now, request_id=f"{request_id}_now"),
        )  # fmt: skip
        invoice_close(tenant=tenant, period=MARCH.date())
    keys = {t.slug: services.apikey_issue(tenant=t, name="ci").plaintext for t in (acme, globex)}
    return keys


def _text(response) -> str:
    if response.headers.get("content-type", "").startswith("application/pdf"):
        reader = PdfReader(io.BytesIO(response.content))
        return "\n".join(page.extract_text() for page in reader.pages)
    return response.text


def _paths() -> list[str]:
    this_month = f"{timezone.now():%Y-%m}"
    paths = ["/api/invoices", "/api/usage.csv",
             "/api/usage.csv?start=2000-01-01T00:00:00Z&end=2100-01-01T00:00:00Z"]  # fmt: skip
    for period in ("2025-03", this_month, "2024-01"):
        paths += [f"/api/invoices/{period}.{fmt}" for fmt in ("csv", "json", "pdf")]
    return paths


@pytest.mark.parametrize(("caller", "other"), [("acme", "globex"), ("globex", "acme")])
def test_every_management_endpoint_shows_the_caller_only_its_own_data(
    tenants_with_usage, gateway, caller, other
):
    key = tenants_with_usage[caller]
    other_invoice = Invoice.objects.get(tenant__slug=other, status=Invoice.Status.FINAL)
    own_invoice = Invoice.objects.get(tenant__slug=caller, status=Invoice.Status.FINAL)

    seen_own = False
    for path in _paths():
        response = httpx.get(f"{gateway.url}{path}", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, (path, response.text[:300])
        text = _text(response)
        for secret in (*SECRETS[other], other_invoice.number, f"{other}-"):
            assert secret not in text, (path, secret)
        seen_own |= SECRETS[caller][0] in text and own_invoice.number in text

    assert seen_own  # the checks looked at real documents, not empty ones


def test_urls_naming_another_tenants_objects_get_404_or_the_callers_own(
    tenants_with_usage, gateway
):
    globex_key = tenants_with_usage["globex"]
    acme = Tenant.objects.get(slug="acme")
    acme_invoice = Invoice.objects.get(tenant=acme, status=Invoice.Status.FINAL)
    headers = {"Authorization": f"Bearer {globex_key}"}

    for path in [f"/api/invoices/{acme_invoice.number}", f"/api/invoices/{acme_invoice.pk}",
                 f"/api/tenants/{acme.slug}", f"/api/tenants/{acme.pk}/invoices",
                 f"/api/invoices/{acme_invoice.number}/download",
                 f"/api/invoices/2025-03.{acme_invoice.number}"]:  # fmt: skip
        response = httpx.get(f"{gateway.url}{path}", headers=headers)
        assert response.status_code == 404, (path, response.status_code)
        assert "acme" not in response.text
    # /api/keys takes a manage key (its cross-tenant 404s: tests/portal/test_keys_api.py).
    acme_key = acme.api_keys.first()
    response = httpx.get(f"{gateway.url}/api/keys/{acme_key.display_prefix}", headers=headers)
    assert response.status_code == 403
    assert "acme" not in response.text
    # Query parameters naming the other tenant are refused as unknown, never obeyed.
    for path in [f"/api/invoices/2025-03.csv?tenant=acme&tenant_id={acme.pk}",
                 f"/api/usage.csv?tenant=acme&tenant_id={acme.pk}&api_key_prefix=sk-AbC12345",
                 f"/api/invoices?tenant=acme&tenant_id={acme.pk}"]:  # fmt: skip
        response = httpx.get(f"{gateway.url}{path}", headers=headers)
        assert response.status_code == 400, path
        assert response.json()["error"]["code"] == "unknown_parameter"
        assert "acme" not in response.text
    rows = list(csv.DictReader(io.StringIO(httpx.get(
        f"{gateway.url}/api/invoices/2025-03.csv", headers=headers).text)))  # fmt: skip
    assert {row["tenant"] for row in rows} == {"globex"}


@pytest.mark.parametrize(
    "path",
    ["/admin/", "/admin/tenants/tenant/", "/admin/tenants/apikey/", "/admin/billing/invoice/",
     "/admin/models_mgmt/servedmodel/add/", "/admin/auth/user/"],
)  # fmt: skip
def test_a_tenant_key_cannot_reach_the_admin(tenants_with_usage, gateway, path):
    key = tenants_with_usage["acme"]

    for method in ("GET", "POST"):
        response = httpx.request(method, f"{gateway.url}{path}",
                                 headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        # To the sign-in page (GET) or refused by CSRF (POST): never the page itself.
        assert response.status_code in (302, 403), (method, response.status_code)
        if response.status_code == 302:
            assert "/login/" in response.headers["location"]
        assert "acme-secret-model" not in response.text
        assert "globex" not in response.text


def test_a_tenant_key_cannot_reach_another_tenants_models(transactional_db, gateway, catalog):
    limited = services.tenant_register(slug="initech", model_allow_list=["fake"])
    key = services.apikey_issue(tenant=limited, name="ci").plaintext
    headers = {"Authorization": f"Bearer {key}"}

    listed = httpx.get(f"{gateway.url}/v1/models", headers=headers).json()
    smol = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=headers,
        json={"model": "smol", "messages": [{"role": "user", "content": "x"}]},
    )

    assert [m["id"] for m in listed["data"]] == ["fake"]
    assert smol.status_code == 404
    assert smol.json()["error"]["code"] == "model_not_found"


ADMIN_PATHS = ["/admin/", "/admin/tenants/tenant/", "/admin/tenants/tenant/{acme}/change/",
               "/admin/tenants/tenant/{globex}/change/", "/admin/tenants/apikey/",
               "/admin/auth/user/", "/admin/billing/invoice/"]  # fmt: skip


def test_tenant_people_are_not_operators(client, acme, globex, alice, bob, charlie):
    # One test for the three (their password hashes are slow to make): owner, member, outsider.
    for user in (alice, bob, charlie):
        client.force_login(user)
        for path in ADMIN_PATHS:
            response = client.get(path.format(acme=acme.pk, globex=globex.pk))

            assert response.status_code == 302, (user.username, path)
            assert response["Location"].startswith("/admin/login/")


def test_a_tenant_owner_cannot_sign_in_to_the_admin_or_change_anything(client, acme, alice):
    signed_in = client.post("/admin/login/?next=/admin/",
                            {"username": "alice", "password": "pw-alice-123"})  # fmt: skip
    changed = client.post(
        f"/admin/tenants/tenant/{acme.pk}/change/",
        {"slug": "acme", "name": "Pwned", "max_concurrent_requests": "999"},
    )

    assert signed_in.status_code == 200  # the form again, with an error
    assert "staff account" in signed_in.content.decode()
    assert changed.status_code == 302
    assert changed["Location"].startswith("/admin/login/")
    acme.refresh_from_db()
    assert (acme.name, acme.max_concurrent_requests) == ("Acme Corp", 4)


def test_a_signed_in_person_is_not_a_key_on_the_api(client, alice):
    client.force_login(alice)

    response = client.get("/api/invoices")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
