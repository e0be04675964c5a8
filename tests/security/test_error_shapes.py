"""What a client learns from the errors: every /api/ error is OpenAI-shaped JSON (404s and
Django's own 400/405 used to be HTML pages or DRF's `{"detail": ...}`), and a suspended tenant's
refusal does not name the tenant (whoever holds a leaked key learns nothing of whose it is)."""

import httpx
import pytest

from tenants import services
from tests.security.conftest import error_of


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/api/nope", {}, 404),
        ("GET", "/api/invoices/", {}, 404),
        ("GET", "/api", {}, 404),
        ("GET", "/api/invoices/2026-11/extra.csv", {}, 404),
        ("POST", "/api/schema", {}, 405),
        ("GET", "/api/schema?format=xml", {}, 404),
        ("GET", "/api/schema", {"Host": "not-allowed.example"}, 400),
    ],
)
def test_every_api_error_is_openai_shaped(gateway, method, path, headers, status):
    response = httpx.request(method, f"{gateway.url}{path}", headers=headers)

    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    error = error_of(response, status)
    assert "<" not in error["message"]


def test_pages_outside_the_api_keep_their_html_404(gateway):
    response = httpx.get(f"{gateway.url}/portal/nope/")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


def test_a_suspended_tenants_refusal_names_no_tenant(gateway, transactional_db):
    tenant = services.tenant_register(slug="hooli-secret", name="Hooli Secret Project")
    key = services.apikey_issue(tenant=tenant, name="ci").plaintext
    services.tenant_suspend(tenant=tenant)
    auth = {"Authorization": f"Bearer {key}"}

    refusals = [httpx.get(f"{gateway.url}{path}", headers=auth)
                for path in ("/v1/models", "/api/invoices")]  # fmt: skip

    for response in refusals:
        error = error_of(response, 403)
        assert error["code"] == "tenant_suspended"
        assert "hooli" not in error["message"].lower()
        assert "suspended" in error["message"]
