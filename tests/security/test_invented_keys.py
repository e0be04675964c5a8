"""Keys with a valid checksum are free to invent (the checksum is public). Each one used to leave
two entries in the shared cache, one for an hour (`apikey:last-known:<digest>`), so a client
could fill Redis at will; now only keys that exist are cached there, and unknown digests are
remembered by each process alone, in a bounded amount of memory."""

import httpx
from django.core.cache import cache

from tenants import apikeys, services


def test_invented_keys_leave_nothing_in_the_shared_cache(gateway, transactional_db):
    tenant = services.tenant_register(slug="acme", name="Acme")
    real = services.apikey_issue(tenant=tenant, name="ci").plaintext
    invented = [apikeys.generate_key().plaintext for _ in range(100)]

    statuses = set()
    with httpx.Client(base_url=gateway.url) as client:
        for key in invented:
            for path in ("/api/invoices", "/v1/models"):
                response = client.get(path, headers={"Authorization": f"Bearer {key}"})
                statuses.add((response.status_code, response.json()["error"]["code"]))
        known = client.get("/api/invoices", headers={"Authorization": f"Bearer {real}"})

    assert statuses == {(401, "invalid_api_key")}
    digests = [apikeys.key_digest(key) for key in invented]
    cached = cache.get_many([services._last_known_cache_key(d) for d in digests]
                            + [services._lookup_cache_key(d) for d in digests])  # fmt: skip
    assert cached == {}
    # A real key is still cached as before (for the database outage it must survive).
    assert known.status_code == 200
    assert cache.get(services._last_known_cache_key(apikeys.key_digest(real))) is not None


def test_the_process_memory_of_unknown_digests_is_bounded(db, settings):
    settings.APIKEY_CACHE_SECONDS = 60
    memory = services._UnknownDigests(size=50)
    digests = [apikeys.key_digest(apikeys.generate_key().plaintext) for _ in range(500)]

    for digest in digests:
        memory.add(digest)

    assert len(memory._until) == 50
    assert digests[-1] in memory
    assert digests[0] not in memory
