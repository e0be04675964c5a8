"""/api/keys end to end: a manage key (made by `apikey create SLUG --scope manage`) creates a key
that the `openai` client then uses on the real gateway, rotates and revokes it; a manage key is
refused on /v1/ and an inference key on /api/keys; another tenant's prefix is a 404; a portal
session works with its CSRF token only; bad input is an OpenAI-shaped 400; rate limited."""

import io
from datetime import timedelta

import httpx
import openai
import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from tenants import services
from tenants.models import ApiKey
from tests.gateway_server import make_customer
from tests.portal.conftest import sign_in_client

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _manage_key(slug: str) -> str:
    out = io.StringIO()
    call_command("apikey", "create", slug, "--scope", "manage", "--name", "automation",
                 stdout=out, stderr=io.StringIO())  # fmt: skip
    return out.getvalue().strip().splitlines()[-1]


def _api(gateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=f"{gateway.url}/api", timeout=30,
                        headers={"Authorization": f"Bearer {key}"})  # fmt: skip


def test_a_key_made_through_the_api_serves_the_openai_client_until_revoked(gateway, catalog):
    customer = make_customer(gateway, slug="scripted")
    api = _api(gateway, _manage_key("scripted"))

    created = api.post("/keys", json={"name": "deploy bot"})
    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    body = created.json()
    assert (body["object"], body["name"], body["scope"], body["state"]) == (
        "api_key", "deploy bot", "inference", "active",
    )  # fmt: skip
    client = openai.OpenAI(base_url=customer.base_url, api_key=body["key"], max_retries=0)
    assert client.chat.completions.create(**CHAT).choices

    prefix = body["id"]
    assert api.patch(f"/keys/{prefix}", json={"name": "renamed"}).json()["name"] == "renamed"
    shown = api.get(f"/keys/{prefix}").json()
    assert "key" not in shown
    assert shown["name"] == "renamed"
    assert prefix in [k["id"] for k in api.get("/keys").json()["data"]]

    rotated = api.post(f"/keys/{prefix}/rotate", json={"grace_hours": 0})
    assert rotated.status_code == 201
    new = rotated.json()
    assert new["replaced"]["replaced_by"] == new["id"]
    new_client = openai.OpenAI(base_url=customer.base_url, api_key=new["key"], max_retries=0)
    assert new_client.chat.completions.create(**CHAT).choices
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**CHAT)  # the old one, with no grace

    assert api.post(f"/keys/{new['id']}/revoke").json()["state"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        new_client.chat.completions.create(**CHAT)
    actions = list(AuditEvent.objects.filter(tenant_slug="scripted", actor_kind="api_key")
                   .order_by("id").values_list("action", flat=True))  # fmt: skip
    assert actions == ["apikey.created", "apikey.changed", "apikey.rotated", "apikey.revoked"]


def test_a_manage_key_is_refused_on_v1_and_an_inference_key_on_api_keys(gateway, catalog):
    customer = make_customer(gateway, slug="scopes")
    manage = _manage_key("scopes")

    with pytest.raises(openai.PermissionDeniedError) as refused:
        openai.OpenAI(base_url=customer.base_url, api_key=manage,
                      max_retries=0).chat.completions.create(**CHAT)  # fmt: skip
    listing = _api(gateway, customer.key).get("/keys")
    creating = _api(gateway, customer.key).post("/keys", json={"name": "x"})

    assert refused.value.code == "wrong_key_scope"
    assert listing.status_code == creating.status_code == 403
    assert listing.json()["error"]["code"] == "wrong_key_scope"
    assert listing.json()["error"]["type"] == "permission_error"
    assert services.tenant_for_key(customer.key).tenant.api_keys.count() == 2  # none made


def test_another_tenants_prefix_is_a_404_and_stays_untouched(gateway, catalog):
    make_customer(gateway, slug="mine")
    theirs = make_customer(gateway, slug="theirs")
    their_key = ApiKey.objects.get(tenant=theirs.tenant)
    api = _api(gateway, _manage_key("mine"))

    answers = [
        api.get(f"/keys/{their_key.display_prefix}"),
        api.patch(f"/keys/{their_key.display_prefix}", json={"name": "stolen"}),
        api.post(f"/keys/{their_key.display_prefix}/revoke"),
        api.post(f"/keys/{their_key.display_prefix}/rotate", json={}),
    ]

    assert [a.status_code for a in answers] == [404] * 4
    assert {a.json()["error"]["code"] for a in answers} == {"unknown_api_key"}
    assert all(their_key.prefix not in a.text for a in answers)
    their_key.refresh_from_db()
    assert (their_key.name, their_key.revoked_at, their_key.replaced_by) == ("tests", None, None)
    assert their_key.display_prefix not in [k["id"] for k in api.get("/keys").json()["data"]]


def test_a_portal_session_manages_keys_with_its_csrf_token_only(alice, acme):
    client = sign_in_client(Client(enforce_csrf_checks=True), alice, acme)
    page = client.get("/portal/keys/")  # sets the CSRF cookie, as a browser would have it
    token = page.cookies["csrftoken"].value

    refused = client.post("/api/keys", {"name": "no token"}, content_type="application/json")
    created = client.post("/api/keys", {"name": "with token"}, content_type="application/json",
                          HTTP_X_CSRFTOKEN=token)  # fmt: skip

    assert refused.status_code == 403
    assert created.status_code == 201
    assert list(acme.api_keys.values_list("name", flat=True)) == ["with token"]
    row = AuditEvent.objects.get(action="apikey.created")
    assert (row.actor_kind, row.actor_name) == ("user", "alice")


def test_without_credentials_it_is_a_401(client, acme):
    response = client.get("/api/keys")

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "scope": "root"}, "scope"),
        ({"name": "bad\u202ename"}, None),
        ({"name": "x" * 101}, "name"),
    ],
    ids=["expiry-in-the-past", "unknown-scope", "control-character", "too-long"],
)
def test_bad_input_is_an_openai_400_and_issues_nothing(client, acme, body, param):
    manage = services.apikey_issue(tenant=acme, scope=ApiKey.Scope.MANAGE).plaintext

    response = client.post("/api/keys", body, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {manage}")  # fmt: skip

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert acme.api_keys.count() == 1


def test_the_expiry_can_be_set_and_cleared(client, acme, acme_key):
    manage = services.apikey_issue(tenant=acme, scope=ApiKey.Scope.MANAGE).plaintext
    url = f"/api/keys/{acme_key.api_key.display_prefix}"
    later = (timezone.now() + timedelta(days=3)).isoformat()

    set_ = client.patch(url, {"expires_at": later}, content_type="application/json",
                        HTTP_AUTHORIZATION=f"Bearer {manage}")  # fmt: skip
    cleared = client.patch(url, {"expires_at": None}, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {manage}")  # fmt: skip

    assert set_.json()["expires_at"] is not None
    assert cleared.json()["expires_at"] is None
    changes = [r.changes for r in AuditEvent.objects.filter(action="apikey.changed")]
    assert [list(c) for c in changes] == [["expires_at"], ["expires_at"]]


def test_the_api_is_rate_limited_per_tenant(client, acme, settings):
    settings.KEYS_API_REQUESTS_PER_MINUTE = 2
    manage = services.apikey_issue(tenant=acme, scope=ApiKey.Scope.MANAGE).plaintext

    answers = [client.get("/api/keys", HTTP_AUTHORIZATION=f"Bearer {manage}") for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert int(answers[2]["Retry-After"]) >= 1
    assert answers[2].json()["error"]["type"] == "rate_limit_error"


def test_a_keys_limits_are_set_shown_and_validated_as_everywhere(client, acme):
    manage = services.apikey_issue(tenant=acme, scope=ApiKey.Scope.MANAGE).plaintext
    auth = {"HTTP_AUTHORIZATION": f"Bearer {manage}", "content_type": "application/json"}
    ceiling = acme.max_concurrent_requests

    created = client.post("/api/keys", {"name": "capped", "max_concurrent_requests": 1,
                                        "monthly_budget": "2.50"}, **auth)  # fmt: skip
    prefix = created.json()["id"]
    changed = client.patch(f"/api/keys/{prefix}", {"max_tokens_per_minute": 500,
                                                   "monthly_budget": None}, **auth)  # fmt: skip
    above = client.patch(f"/api/keys/{prefix}", {"max_concurrent_requests": ceiling + 1},
                         **auth)  # fmt: skip

    assert created.status_code == 201
    assert (created.json()["max_concurrent_requests"], created.json()["monthly_budget"]) == (
        1, "2.50")  # fmt: skip
    assert (changed.json()["max_tokens_per_minute"], changed.json()["monthly_budget"]) == (
        500, None)  # fmt: skip
    assert above.status_code == 400
    assert above.json()["error"]["param"] == "max_concurrent_requests"
    assert f"cannot be above its tenant's ({ceiling})" in above.json()["error"]["message"]
    key = ApiKey.objects.get(prefix=prefix.removeprefix("sk-"))
    assert (key.max_concurrent_requests, key.max_tokens_per_minute) == (1, 500)
