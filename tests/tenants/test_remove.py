from tenants import services
from tenants.models import ApiKey, Tenant


def test_a_tenant_without_usage_is_deleted(acme, acme_key):
    deleted = services.tenant_remove(tenant=acme)

    assert deleted
    assert not Tenant.objects.filter(slug="acme").exists()
    assert not ApiKey.objects.exists()


def test_a_tenant_with_usage_is_suspended_and_its_keys_revoked_never_deleted(acme, acme_key):
    services.tenant_for_key(acme_key.plaintext)  # marks the key used
    other = services.apikey_issue(tenant=acme, name="second")

    deleted = services.tenant_remove(tenant=acme)

    assert not deleted
    acme.refresh_from_db()
    assert acme.status == Tenant.Status.SUSPENDED
    assert ApiKey.objects.filter(tenant=acme, revoked_at__isnull=True).count() == 0
    assert {key.pk for key in ApiKey.objects.filter(tenant=acme)} == {
        acme_key.api_key.pk,
        other.api_key.pk,
    }
