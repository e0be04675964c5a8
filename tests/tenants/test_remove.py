"""Removing a tenant: deleted when it never used the platform, otherwise kept (suspended, its keys
revoked) for the billing records that name it."""

from datetime import date
from decimal import Decimal

import pytest

from billing.invoices import invoice_close
from billing.pricing import price_set
from tenants import services
from tenants.models import ApiKey, Tenant
from tests.billing.factories import event, store


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


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(lambda tenant: store(event(tenant)), id="ledger"),
        pytest.param(lambda tenant: invoice_close(tenant=tenant, period=date(2026, 1, 1)),
                     id="invoice"),
        pytest.param(lambda tenant: price_set(tenant=tenant, model_id="llama",
                                              input_per_million=Decimal(1),
                                              output_per_million=Decimal(1)), id="own price"),
    ],
)  # fmt: skip
def test_a_tenant_that_billing_records_name_is_kept_though_no_key_was_used(acme, acme_key, record):
    record(acme)

    deleted = services.tenant_remove(tenant=acme)

    assert not deleted
    acme.refresh_from_db()
    assert acme.status == Tenant.Status.SUSPENDED
    assert ApiKey.objects.get(pk=acme_key.api_key.pk).revoked_at is not None


def test_usage_of_another_tenant_does_not_keep_this_one(acme, globex):
    store(event(globex))

    assert services.tenant_remove(tenant=acme)
    assert Tenant.objects.filter(slug="globex").exists()
