"""Where webhook events come from besides alerts and tests: a finalized invoice, and staff's
resend in the admin (read-only otherwise: secrets never shown, nothing editable)."""

import json
from datetime import UTC, date, datetime

import pytest
from django.contrib.auth import get_user_model

from billing.invoices import invoice_close
from billing.models import WebhookDelivery
from billing.webhooks import webhook_endpoint_set, webhook_event_emit
from tests.billing.factories import event, store


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("op", "op@example.com", "pw-1"))
    return client


def test_a_finalized_invoice_is_sent_to_the_tenants_webhook(db, acme, globex, settings):
    settings.SITE_URL = "https://platform.example"
    webhook_endpoint_set(tenant=acme, url="https://hooks.example.com/in", event_types=[
        "invoice.finalized"])  # fmt: skip
    store(event(acme, at=datetime(2026, 10, 5, tzinfo=UTC)))

    invoice = invoice_close(tenant=acme, period=date(2026, 10, 1))
    invoice_close(tenant=globex, period=date(2026, 10, 1))  # no endpoint: no event

    (delivery,) = WebhookDelivery.objects.all()
    body = json.loads(delivery.body)
    assert body["type"] == "invoice.finalized"
    assert body["tenant"] == "acme"
    assert body["data"] == {
        "number": invoice.number, "period": "2026-10", "total": str(invoice.total),
        "currency": "USD",
        "download_url": f"https://platform.example/portal/invoices/{invoice.number}/pdf",
    }  # fmt: skip


def test_an_endpoint_gets_only_the_event_types_it_chose(db, acme):
    webhook_endpoint_set(tenant=acme, url="https://hooks.example.com/in",
                         event_types=["invoice.finalized"])  # fmt: skip
    assert webhook_event_emit(tenant=acme, event_type="apikey.expiring", data={}) is None
    assert webhook_event_emit(tenant=acme, event_type="webhook.test", data={}) is not None


def test_staff_see_deliveries_read_only_and_can_resend_one(
    admin_client, acme, django_capture_on_commit_callbacks
):
    issued = webhook_endpoint_set(tenant=acme, url="https://hooks.example.com/in", event_types=[])
    delivery = webhook_event_emit(tenant=acme, event_type="webhook.test", data={})
    WebhookDelivery.objects.filter(pk=delivery.pk).update(state=WebhookDelivery.State.FAILED)

    endpoint_page = admin_client.get(f"/admin/billing/webhookendpoint/{issued.endpoint.pk}/change/")
    delivery_page = admin_client.get(f"/admin/billing/webhookdelivery/{delivery.pk}/change/")
    posted = admin_client.post(f"/admin/billing/webhookdelivery/{delivery.pk}/change/", {})
    with django_capture_on_commit_callbacks() as queued:
        resent = admin_client.post(
            "/admin/billing/webhookdelivery/",
            {"action": "resend", "_selected_action": [delivery.pk]},
        )

    assert endpoint_page.status_code == 200
    assert delivery_page.status_code == 200
    for page in ("webhookendpoint", "webhookdelivery", "spendalert", "spendalertrule"):
        assert admin_client.get(f"/admin/billing/{page}/").status_code == 200
    assert issued.secret not in endpoint_page.content.decode()
    assert 'name="_save"' not in delivery_page.content.decode()
    assert posted.status_code == 403
    assert resent.status_code == 302
    assert len(queued) == 1
    delivery.refresh_from_db()
    assert delivery.state == WebhookDelivery.State.PENDING
    assert WebhookDelivery.objects.count() == 1  # the same event, not a new one


def test_staff_set_a_tenants_thresholds_in_the_admin_with_the_same_rule(admin_client, acme):
    form = {"tenant": acme.pk, "scope": "tenant_budget", "scope_ref": "", "thresholds": "[0]"}
    refused = admin_client.post("/admin/billing/spendalertrule/add/", form)
    saved = admin_client.post(
        "/admin/billing/spendalertrule/add/", {**form, "thresholds": "[90, 40]"}
    )

    assert refused.status_code == 200
    assert "whole percentages" in refused.content.decode()
    assert saved.status_code == 302
    assert list(acme.alert_rules.values_list("thresholds", flat=True)) == [[40, 90]]
