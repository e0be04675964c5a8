"""The webhook page end to end in headless Chromium against a real server: an owner adds an
endpoint (a real receiver on loopback, which verifies signatures), sees its secret once, sends
a test event and sees it delivered. The server runs with WEBHOOK_ALLOW_PRIVATE and
WEBHOOK_ALLOW_HTTP, which only tests and development set."""

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from tenants import services
from tenants.models import Membership
from tests.browser import assert_accessible, open_page, screenshot, sign_in
from tests.fakes.webhook_receiver import start_receiver
from tests.gateway_server import gateway_env
from tests.servers import free_port, gateway_command, running

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("webhooks") / "server.log"
    env = gateway_env(WEBHOOK_ALLOW_PRIVATE="1", WEBHOOK_ALLOW_HTTP="1")
    with running(gateway_command(port, workers=1), ready_url=f"http://127.0.0.1:{port}/healthz",
                 env=env, log=log):  # fmt: skip
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def receiver():
    found, http_server = start_receiver()
    yield found
    http_server.shutdown()


@pytest.fixture
def owner():
    tenant = services.tenant_register(slug="initech", name="Initech")
    user = get_user_model().objects.create_user("peter", "peter@initech.example", "tps-report-9")
    services.membership_set(tenant=tenant, user=user, role=Membership.Role.OWNER)
    member = get_user_model().objects.create_user("milton", "milton@initech.example", "stapler-77")
    services.membership_set(tenant=tenant, user=member, role=Membership.Role.MEMBER)
    return tenant


def test_an_owner_adds_an_endpoint_sees_the_secret_once_and_a_test_delivery(
    browser, server, receiver, owner
):
    with open_page(browser, server) as page:
        sign_in(page, "peter", "tps-report-9")
        page.get_by_role("link", name="Webhooks").click()
        expect(page.get_by_role("heading", name="Add an endpoint")).to_be_visible()
        assert_accessible(page)

        page.get_by_label("Endpoint URL").fill("https://me:pw@example.com/hook")
        page.get_by_role("button", name="Add endpoint").click()
        expect(page.get_by_text("must not carry a user name or password")).to_be_visible()
        expect(page.get_by_role("heading", name="Add an endpoint")).to_be_visible()  # refused

        page.get_by_label("Endpoint URL").fill(f"{receiver.url}/hook")
        page.get_by_label("webhook.test").check()
        page.get_by_label("invoice.finalized").check()
        page.get_by_role("button", name="Add endpoint").click()
        expect(page.get_by_text("this is the only time it is shown")).to_be_visible()
        secret = page.locator("#webhook-secret").input_value()
        assert secret.startswith("whsec_")
        screenshot(page, "portal-webhook-secret", hide=[page.locator("#webhook-secret")])
        assert_accessible(page)

        receiver.reset(secret=secret)
        page.get_by_role("button", name="Send test event").click()
        expect(page.get_by_text("A webhook.test event is on its way")).to_be_visible()
        assert secret not in page.content()  # shown once only
        row = page.get_by_role("row").filter(has_text="webhook.test")
        expect(row.get_by_text("Delivered")).to_be_visible()
        expect(row.get_by_text("HTTP 200")).to_be_visible()
        event_ids_shown = [row.locator("td.mono").inner_text()]
        screenshot(page, "portal-webhook-delivered")
        assert_accessible(page)

    (event,) = receiver.accepted.values()
    assert event["type"] == "webhook.test"
    assert event["tenant"] == "initech"
    assert [a.signed for a in receiver.arrivals] == [True]
    assert event_ids_shown == [event["id"]]  # the page listed the delivery the receiver got


def test_members_who_are_not_owners_cannot_open_the_page(browser, server, owner):
    with open_page(browser, server) as page:
        sign_in(page, "milton", "stapler-77")
        expect(page.get_by_role("link", name="Webhooks")).to_have_count(0)
        response = page.goto("/portal/webhooks/")
        assert response.status == 403
