import math
import re
import time
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tenants import apikeys, services
from tenants.errors import (
    ExpiredApiKey,
    MalformedApiKey,
    MissingApiKey,
    RevokedApiKey,
    TenantSuspended,
    UnknownApiKey,
)
from tenants.models import ApiKey


def test_key_format_is_prefixed_url_safe_and_carries_256_bits():
    key = apikeys.generate_key()

    assert key.plaintext.startswith("sk-" + key.prefix)
    assert re.fullmatch(r"sk-[0-9A-Za-z]+", key.plaintext)
    assert len(key.plaintext) == apikeys.KEY_LENGTH
    assert apikeys.SECRET_LENGTH * math.log2(62) >= 256
    assert apikeys.parse_key(key.plaintext) == key.prefix
    assert key.digest == apikeys.key_digest(key.plaintext)
    assert apikeys.generate_key().plaintext != key.plaintext


def test_checksum_rejects_a_mistyped_key_without_the_database(db):
    key = apikeys.generate_key().plaintext
    position = len(key) - 10
    typo = key[:position] + ("a" if key[position] != "a" else "b") + key[position + 1 :]

    with CaptureQueriesContext(connection) as queries, pytest.raises(MalformedApiKey):
        services.tenant_for_key(typo)

    assert len(queries) == 0
    with pytest.raises(apikeys.MalformedKeyError):
        apikeys.parse_key(key + "x")


def test_issued_key_authenticates_to_its_tenant(acme, acme_key):
    found = services.tenant_for_key(acme_key.plaintext)

    assert found.tenant == acme
    assert found.api_key == acme_key.api_key


def test_no_plaintext_key_is_stored_in_any_column_of_any_table(acme, globex):
    issued = [services.apikey_issue(tenant=tenant, name="k") for tenant in (acme, globex)]
    issued.append(services.apikey_rotate(api_key=issued[0].api_key))
    services.tenant_for_key(issued[1].plaintext)
    secrets = [key.plaintext for key in issued] + [key.plaintext[3 + 8 :] for key in issued]

    cells = 0
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                for value in row:
                    cells += 1
                    text = value.decode(errors="ignore") if isinstance(value, bytes) else str(value)
                    assert not any(secret in text for secret in secrets), table
    assert cells > 0
    assert ApiKey.objects.filter(digest=apikeys.key_digest(issued[0].plaintext)).exists()


@pytest.mark.parametrize("presented", [None, ""])
def test_missing_key_is_refused(db, presented):
    with pytest.raises(MissingApiKey):
        services.tenant_for_key(presented)


def test_unknown_key_is_refused(db):
    with pytest.raises(UnknownApiKey) as caught:
        services.tenant_for_key(apikeys.generate_key().plaintext)
    assert caught.value.status == 401
    assert caught.value.code == "invalid_api_key"


def test_revoked_key_is_refused_at_once_even_when_cached(
    acme_key, django_capture_on_commit_callbacks
):
    services.tenant_for_key(acme_key.plaintext)  # now in the lookup cache

    with django_capture_on_commit_callbacks(execute=True):
        services.apikey_revoke(api_key=acme_key.api_key)

    with pytest.raises(RevokedApiKey) as caught:
        services.tenant_for_key(acme_key.plaintext)
    assert caught.value.status == 401
    assert acme_key.plaintext not in caught.value.message
    assert acme_key.api_key.display_prefix in caught.value.message


def test_expired_key_is_refused(acme):
    issued = services.apikey_issue(
        tenant=acme, name="short", expires_at=timezone.now() + timedelta(days=1)
    )
    services.tenant_for_key(issued.plaintext)

    later = timezone.now() + timedelta(days=1, seconds=1)
    with time_machine.travel(later), pytest.raises(ExpiredApiKey) as caught:
        services.tenant_for_key(issued.plaintext)
    assert caught.value.status == 401


def test_suspended_tenant_is_refused_with_403_and_resume_lets_it_back(
    acme, acme_key, django_capture_on_commit_callbacks
):
    services.tenant_for_key(acme_key.plaintext)

    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_suspend(tenant=acme)
    with pytest.raises(TenantSuspended) as caught:
        services.tenant_for_key(acme_key.plaintext)
    assert caught.value.status == 403
    assert caught.value.code == "tenant_suspended"

    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_resume(tenant=acme)
    assert services.tenant_for_key(acme_key.plaintext).tenant == acme


def test_each_refusal_is_its_own_error():
    kinds = {MissingApiKey, MalformedApiKey, UnknownApiKey, RevokedApiKey, ExpiredApiKey}
    assert len(kinds) == 5
    assert TenantSuspended not in kinds
    assert all(kind.status == 401 for kind in kinds)


def test_rotation_keeps_the_old_key_for_the_grace_period_only(acme, acme_key):
    issued = services.apikey_rotate(api_key=acme_key.api_key, grace=timedelta(hours=2))

    assert services.tenant_for_key(acme_key.plaintext).tenant == acme
    assert services.tenant_for_key(issued.plaintext).tenant == acme
    acme_key.api_key.refresh_from_db()
    assert acme_key.api_key.replaced_by == issued.api_key
    assert issued.api_key.name == acme_key.api_key.name

    with time_machine.travel(timezone.now() + timedelta(hours=2, seconds=1)):
        with pytest.raises(ExpiredApiKey):
            services.tenant_for_key(acme_key.plaintext)
        assert services.tenant_for_key(issued.plaintext).tenant == acme


def test_rotation_default_grace_comes_from_settings(acme_key, settings):
    settings.APIKEY_ROTATION_GRACE_SECONDS = 600
    before = timezone.now()

    services.apikey_rotate(api_key=acme_key.api_key)

    acme_key.api_key.refresh_from_db()
    assert before + timedelta(seconds=600) <= acme_key.api_key.expires_at
    assert acme_key.api_key.expires_at <= timezone.now() + timedelta(seconds=600)


def test_rotation_never_extends_an_earlier_expiry(acme):
    soon = timezone.now() + timedelta(minutes=5)
    issued = services.apikey_issue(tenant=acme, expires_at=soon)

    services.apikey_rotate(api_key=issued.api_key, grace=timedelta(days=1))

    issued.api_key.refresh_from_db()
    assert issued.api_key.expires_at == soon


def test_a_revoked_key_cannot_be_rotated(acme_key):
    services.apikey_revoke(api_key=acme_key.api_key)

    with pytest.raises(ValueError, match="revoked"):
        services.apikey_rotate(api_key=acme_key.api_key)
    assert acme_key.api_key.tenant.api_keys.count() == 1


def test_last_used_is_written_at_most_once_a_minute(acme_key):
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        services.tenant_for_key(acme_key.plaintext)
    acme_key.api_key.refresh_from_db()
    assert acme_key.api_key.last_used_at == start

    later = start + timedelta(seconds=30)
    with time_machine.travel(later, tick=False), CaptureQueriesContext(connection) as queries:
        services.tenant_for_key(acme_key.plaintext)
    assert not [q for q in queries if q["sql"].startswith("UPDATE")]
    acme_key.api_key.refresh_from_db()
    assert acme_key.api_key.last_used_at == start


def test_last_used_is_written_again_once_the_interval_has_passed(acme_key, settings):
    settings.APIKEY_LAST_USED_INTERVAL_SECONDS = 1
    services.tenant_for_key(acme_key.plaintext)
    acme_key.api_key.refresh_from_db()
    first = acme_key.api_key.last_used_at

    time.sleep(1.2)
    services.tenant_for_key(acme_key.plaintext)

    acme_key.api_key.refresh_from_db()
    assert acme_key.api_key.last_used_at > first
