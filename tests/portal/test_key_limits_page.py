"""A key's own limits from the portal, in Chromium: an owner narrows a key, is told when a limit
is above the tenant's, and the gateway then holds the key to what was saved."""

import openai
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from tenants import services
from tenants.models import ApiKey, Membership
from tests.browser import assert_accessible, screenshot, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner(catalog):
    tenant = services.tenant_register(slug="initech", name="Initech", max_concurrent_requests=4)
    user = get_user_model().objects.create_user("peter", "peter@initech.example", "tps-report-9")
    services.membership_set(tenant=tenant, user=user, role=Membership.Role.OWNER)
    return tenant


def test_an_owner_narrows_a_key_and_the_gateway_holds_it_to_that(page, gateway, owner):
    issued = services.apikey_issue(tenant=owner, name="batch jobs")
    sign_in(page, "peter", "tps-report-9")
    page.get_by_role("link", name="API keys").click()
    page.get_by_role("link", name=f"Limits of {issued.api_key.display_prefix}").click()

    page.get_by_label("Concurrent requests").fill("5")
    page.get_by_role("button", name="Save limits").click()
    expect(page.get_by_text("cannot be above its tenant's (4)")).to_be_visible()
    assert_accessible(page)

    page.get_by_label("Concurrent requests").fill("2")
    page.get_by_label("fake").check()
    page.get_by_role("button", name="Save limits").click()
    expect(page.get_by_text("now has the limits you set")).to_be_visible()
    expect(page.get_by_text("2 at once; models: fake")).to_be_visible()
    screenshot(page, "portal-key-limits")

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=issued.plaintext, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}])
    assert client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}]
    ).choices
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert (key.max_concurrent_requests, key.model_allow_list) == (2, ["fake"])
