"""The operator's billing admin: a finalized invoice cannot be changed or deleted there."""

from datetime import UTC, date, datetime

import pytest
from django.contrib.auth import get_user_model

from billing.invoices import invoice_close
from billing.models import Invoice, UsageRecord
from tests.billing.factories import event, store


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("op", "op@example.com", "pw-1"))
    return client


def test_finalized_invoices_and_the_ledger_are_read_only_in_the_admin(admin_client, acme):
    store(event(acme, at=datetime(2026, 10, 5, tzinfo=UTC)))
    invoice = invoice_close(tenant=acme, period=date(2026, 10, 1))
    total = invoice.total
    record = UsageRecord.objects.get()

    page = admin_client.get(f"/admin/billing/invoice/{invoice.pk}/change/")
    posted = admin_client.post(f"/admin/billing/invoice/{invoice.pk}/change/", {"total": "0"})
    deleted = admin_client.post(f"/admin/billing/invoice/{invoice.pk}/delete/", {"post": "yes"})
    ledger_page = admin_client.get(f"/admin/billing/usagerecord/{record.pk}/change/")
    ledger_post = admin_client.post(f"/admin/billing/usagerecord/{record.pk}/change/", {})

    assert page.status_code == 200
    assert invoice.number in page.content.decode()
    assert 'name="_save"' not in page.content.decode()
    assert posted.status_code == 403
    assert deleted.status_code == 403
    assert ledger_page.status_code == 200
    assert ledger_post.status_code == 403
    invoice.refresh_from_db()
    assert invoice.total == total
    assert Invoice.objects.count() == 1
