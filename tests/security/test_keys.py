"""API keys: never in logs (ours or the gateway processes'), usage events, error messages, the
database or the cache; found by digest; revoked across every gateway process within
APIKEY_PROCESS_CACHE_SECONDS, and within APIKEY_CACHE_SECONDS even when a revocation bypasses
the service."""

import hashlib
import logging
import time

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tenants import apikeys, services
from tenants.errors import UnknownApiKey
from tenants.models import ApiKey
from tests.gateway_server import make_customer
from tests.security.conftest import own_gateway

HI = [{"role": "user", "content": "hi"}]
CACHE_SECONDS = 2
PROCESS_CACHE_SECONDS = 1  # the default


@pytest.fixture(scope="module")
def _debug_gateway(django_db_setup, tmp_path_factory):
    settings = {"LOG_LEVEL": "DEBUG", "APIKEY_CACHE_SECONDS": str(CACHE_SECONDS),
                "APIKEY_PROCESS_CACHE_SECONDS": str(PROCESS_CACHE_SECONDS)}  # fmt: skip
    with own_gateway(tmp_path_factory.mktemp("debug-gateway"), workers=2, **settings) as gateway:
        yield gateway


@pytest.fixture
def debug_gateway(_debug_gateway, transactional_db, catalog):
    """Two server processes logging everything (DEBUG), with a short key cache."""
    return _debug_gateway


def _secret(key: str) -> str:
    """The part of a key that is not public (the prefix is shown in listings and errors)."""
    return key[len(apikeys.KEY_PREFIX) + apikeys.PREFIX_LENGTH :]


def _chat(customer, key=None, **extra):
    return httpx.post(f"{customer.base_url}/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key or customer.key}"},
                      json={"model": "fake", "messages": HI, **extra})  # fmt: skip


def test_a_key_is_never_logged_recorded_or_echoed(debug_gateway, caplog):
    caplog.set_level(logging.DEBUG)
    gateway = debug_gateway
    acme = make_customer(gateway)
    doomed = services.apikey_issue(tenant=acme.tenant, name="doomed").plaintext
    tampered = acme.key[:-1] + ("A" if acme.key[-1] != "A" else "B")
    unknown = apikeys.generate_key().plaintext
    headers = {"Authorization": f"Bearer {acme.key}"}

    # Everything a key goes through: success, stream, refusals, errors, the management API.
    responses = [
        _chat(acme),
        _chat(acme, stream=True),
        _chat(acme, max_tokens="lots"),
        _chat(acme, model="nope"),
        httpx.get(f"{gateway.url}/v1/models", headers=headers),
        httpx.get(f"{gateway.url}/v1/nowhere", headers=headers),
        httpx.get(f"{gateway.url}/api/invoices", headers=headers),
        httpx.get(f"{gateway.url}/api/usage.csv", headers=headers),
        httpx.get(f"{gateway.url}/api/invoices/13-13.csv", headers=headers),
    ]
    services.apikey_revoke(api_key=ApiKey.objects.get(name="doomed"))
    refusals = [
        _chat(acme, key=doomed),
        _chat(acme, key=tampered),
        _chat(acme, key=unknown),
        _chat(acme, key=acme.key + "x"),
        httpx.get(f"{gateway.url}/api/invoices", headers={"Authorization": f"Bearer {doomed}"}),
        httpx.get(f"{gateway.url}/api/invoices", headers={"Authorization": f"Basic {acme.key}"}),
        httpx.get(f"{gateway.url}/api/invoices", headers={"Authorization": f"Bearer {tampered}"}),
    ]
    new_key = services.apikey_rotate(api_key=ApiKey.objects.get(name="tests")).plaintext
    time.sleep(1)  # usage events are written just after each response ends

    assert [r.status_code for r in responses] == [200, 200, 400, 404, 200, 404, 200, 200, 400]
    assert [r.status_code for r in refusals] == [401] * 7
    assert [r.json()["error"]["code"] for r in refusals] == ["invalid_api_key"] * 7
    assert "revoked" in refusals[0].json()["error"]["message"]
    everything = {
        "test process logs": caplog.text,
        "gateway log (2 processes, DEBUG)": gateway.log_path.read_text(),
        "usage events": gateway.usage_path.read_text(),
        "responses": "\n".join(r.text + str(r.headers) for r in responses + refusals),
    }
    assert "DEBUG" in everything["gateway log (2 processes, DEBUG)"]  # it really logged at DEBUG
    assert len(gateway.events()) >= 2
    for key in (acme.key, doomed, tampered, unknown, new_key):
        for where, text in everything.items():
            assert _secret(key) not in text, f"a key's secret part appears in the {where}"


def test_keys_are_stored_cached_and_looked_up_by_digest_only(acme, acme_key):
    plaintext = acme_key.plaintext
    digest = hashlib.sha256(plaintext.encode()).hexdigest()

    with CaptureQueriesContext(connection) as queries:
        found = services.tenant_for_key(plaintext)
    cache = redis.Redis.from_url(settings.REDIS_URL)
    cached = [k.decode() for k in cache.scan_iter("*apikey*")]
    cached_values = b"".join(cache.dump(k) or b"" for k in cache.scan_iter("*"))

    assert found.tenant == acme
    assert ApiKey.objects.get(pk=acme_key.api_key.pk).digest == digest
    sql = "\n".join(q["sql"] for q in queries.captured_queries)
    assert digest in sql
    assert _secret(plaintext) not in sql
    assert any(digest in k for k in cached)
    assert not any(_secret(plaintext) in k for k in cached)
    assert _secret(plaintext).encode() not in cached_values


def test_the_digest_not_the_prefix_finds_a_key(acme, acme_key):
    """A key whose stored digest no longer matches is unknown, whatever its prefix says."""
    ApiKey.objects.filter(pk=acme_key.api_key.pk).update(digest="0" * 64)

    with pytest.raises(UnknownApiKey):
        services.tenant_for_key(acme_key.plaintext)


def _refused_everywhere(customer, attempts: int = 12) -> list[int]:
    """Statuses of fresh connections (each may land on either server process)."""
    return [_chat(customer).status_code for _ in range(attempts)]


def test_revocation_reaches_every_gateway_process_within_the_process_cache_seconds(debug_gateway):
    acme = make_customer(debug_gateway)
    assert set(_refused_everywhere(acme)) == {200}  # both processes have the key cached

    services.apikey_revoke(api_key=ApiKey.objects.get(tenant=acme.tenant))
    time.sleep(PROCESS_CACHE_SECONDS)
    after = _refused_everywhere(acme)

    assert set(after) == {401}


def test_a_revocation_that_bypasses_the_service_holds_within_the_cache_seconds(debug_gateway):
    """A revocation written straight to the database (a bulk update, a restore) does not clear
    the cache; it still takes effect within APIKEY_CACHE_SECONDS (plus the process cache's)."""
    acme = make_customer(debug_gateway)
    assert set(_refused_everywhere(acme)) == {200}

    revoked_at = time.monotonic()
    ApiKey.objects.filter(tenant=acme.tenant).update(revoked_at=timezone.now())
    while _chat(acme).status_code == 200:
        assert time.monotonic() - revoked_at < CACHE_SECONDS + PROCESS_CACHE_SECONDS + 1
        time.sleep(0.1)
    time.sleep(PROCESS_CACHE_SECONDS + 0.2)  # the other process's own copy

    assert set(_refused_everywhere(acme)) == {401}
