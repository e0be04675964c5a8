"""Keys through a PostgreSQL outage (found by `make reliability`: with the lookup cache a few
seconds long, a restart of the database refused every key whose entry expired meanwhile)."""

import pytest
from django.core.cache import cache
from django.db import OperationalError, connection

from tenants import apikeys, services


def _database_down(execute, sql, params, many, context):
    raise OperationalError("connection refused (the database is restarting)")


def _expire_short_cache(key: str) -> None:
    # What APIKEY_CACHE_SECONDS passing does to the lookup cache.
    cache.delete(services._lookup_cache_key(apikeys.key_digest(key)))


def test_a_known_key_keeps_working_while_the_database_is_away(acme, acme_key):
    issued = acme_key.plaintext
    services.tenant_for_key(issued)  # looked up while the database answers
    _expire_short_cache(issued)

    with connection.execute_wrapper(_database_down):
        found = services.tenant_for_key(issued)

    assert found.tenant == acme
    assert found.api_key.pk == acme_key.api_key.pk


def test_a_key_revoked_before_the_outage_stays_refused_during_it(
    acme_key, django_capture_on_commit_callbacks
):
    issued = acme_key.plaintext
    found = services.tenant_for_key(issued)
    with django_capture_on_commit_callbacks(execute=True):
        services.apikey_revoke(api_key=found.api_key)
    _expire_short_cache(issued)

    with connection.execute_wrapper(_database_down), pytest.raises(OperationalError):
        services.tenant_for_key(issued)  # no answer to stand in: the middleware says 503


def test_a_key_never_looked_up_gets_the_database_error(acme_key):
    with connection.execute_wrapper(_database_down), pytest.raises(OperationalError):
        services.tenant_for_key(acme_key.plaintext)
