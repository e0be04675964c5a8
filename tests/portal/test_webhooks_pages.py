"""The portal's webhook page: owners only, scoped to their tenant; the URL's rule is the
service's, shown as a form error; the secret is in the one response that made it."""

from billing.models import WebhookEndpoint
from billing.webhooks import webhook_endpoint_set
from tests.portal.conftest import sign_in_client

URL = "https://hooks.example.com/in"


def test_an_owner_adds_an_endpoint_and_sees_its_secret_only_then(alice_client, acme):
    response = alice_client.post("/portal/webhooks/", {"url": URL, "event_types": ["webhook.test"]})

    endpoint = WebhookEndpoint.objects.get(tenant=acme)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert endpoint.secret in response.content.decode()
    assert endpoint.event_types == ["webhook.test"]
    assert endpoint.secret not in alice_client.get("/portal/webhooks/").content.decode()


def test_a_bad_url_is_a_form_error_and_nothing_is_saved(alice_client, acme):
    response = alice_client.post("/portal/webhooks/", {"url": "https://169.254.169.254/x"})

    assert response.status_code == 400
    assert "must be a public address" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_rolling_shows_the_new_secret_once_and_removing_stops_events(alice_client, acme):
    issued = webhook_endpoint_set(tenant=acme, url=URL, event_types=[])

    rolled = alice_client.post("/portal/webhooks/roll/")
    endpoint = WebhookEndpoint.objects.get(tenant=acme)
    assert endpoint.secret != issued.secret
    assert endpoint.secret in rolled.content.decode()
    assert endpoint.previous_secret == issued.secret

    assert alice_client.post("/portal/webhooks/remove/").status_code == 302
    assert not WebhookEndpoint.objects.exists()


def test_members_and_other_tenants_owners_cannot_touch_it(client, acme, bob, charlie, globex):
    webhook_endpoint_set(tenant=acme, url=URL, event_types=[])

    sign_in_client(client, bob, acme)
    assert client.get("/portal/webhooks/").status_code == 403
    assert client.post("/portal/webhooks/remove/").status_code == 403
    sign_in_client(client, charlie, globex)
    page = client.get("/portal/webhooks/")
    client.post("/portal/webhooks/remove/")
    client.post("/portal/webhooks/roll/")

    assert URL not in page.content.decode()  # globex's page: its own, empty
    endpoint = WebhookEndpoint.objects.get(tenant=acme)
    assert endpoint.previous_secret == ""  # acme's secret was not rolled


def test_changing_the_endpoint_keeps_its_secret_and_enables_it_again(alice_client, acme):
    issued = webhook_endpoint_set(tenant=acme, url=URL, event_types=[])
    WebhookEndpoint.objects.filter(tenant=acme).update(enabled=False)

    response = alice_client.post(
        "/portal/webhooks/",
        {"url": URL + "/v2", "event_types": ["invoice.finalized", "apikey.expiring"]},
    )

    endpoint = WebhookEndpoint.objects.get(tenant=acme)
    assert response.status_code == 302
    assert endpoint.secret == issued.secret
    assert endpoint.url == URL + "/v2"
    assert endpoint.event_types == ["apikey.expiring", "invoice.finalized"]
    assert endpoint.enabled
    assert issued.secret not in alice_client.get("/portal/webhooks/").content.decode()


def test_an_owner_sets_the_alert_thresholds_and_a_bad_list_is_a_form_error(alice_client, acme):
    page = alice_client.get("/portal/webhooks/")
    assert 'value="50, 80, 100"' in page.content.decode()  # the defaults

    saved = alice_client.post("/portal/webhooks/alerts/", {"thresholds": "90%, 75"})
    refused = alice_client.post("/portal/webhooks/alerts/", {"thresholds": "0, 50"})
    words = alice_client.post("/portal/webhooks/alerts/", {"thresholds": "half"})

    assert saved.status_code == 302
    assert refused.status_code == 400
    assert "whole percentages from 1 to 1000" in refused.content.decode()
    assert words.status_code == 400
    assert list(acme.alert_rules.values_list("thresholds", flat=True)) == [[75, 90]]


def test_a_member_cannot_change_the_thresholds(client, acme, bob):
    sign_in_client(client, bob, acme)
    assert client.post("/portal/webhooks/alerts/", {"thresholds": "10"}).status_code == 403
    assert not acme.alert_rules.exists()


def test_the_page_says_how_long_a_receiver_has(alice_client, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 7.0
    assert "within 7 seconds" in alice_client.get("/portal/webhooks/").content.decode()
