"""A key's own limits from the portal and the admin, without a browser: only owners change
them, and the admin validates them as the CLI does."""

import pytest
from django.contrib.auth import get_user_model

from tenants import services
from tenants.models import ApiKey, Membership

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return services.tenant_register(slug="initech", name="Initech", max_concurrent_requests=4)


def test_a_member_who_is_not_an_owner_cannot_change_limits(client, owner):
    issued = services.apikey_issue(tenant=owner, name="k")
    user = get_user_model().objects.create_user("bob", "bob@initech.example", "bob-pass-12")
    services.membership_set(tenant=owner, user=user, role=Membership.Role.MEMBER)
    client.force_login(user)

    page = client.get("/portal/keys/")
    posted = client.post(f"/portal/keys/{issued.api_key.pk}/limits/",
                         {"max_concurrent_requests": "1"})  # fmt: skip

    assert "Limits of" not in page.content.decode()
    assert posted.status_code in (403, 404)
    assert ApiKey.objects.get(pk=issued.api_key.pk).max_concurrent_requests is None


def test_the_admin_validates_a_keys_limits_as_the_cli_does(admin_client, owner):
    key = services.apikey_issue(tenant=owner, name="k").api_key
    url = f"/admin/tenants/apikey/{key.pk}/change/"
    form = {"max_concurrent_requests": "9", "max_tokens_per_minute": "", "monthly_budget": "",
            "max_requests_per_minute": "", "model_allow_list": "[]"}  # fmt: skip

    refused = admin_client.post(url, form)
    saved = admin_client.post(url, {**form, "max_concurrent_requests": "3"})

    assert refused.status_code == 200
    assert "Max concurrent requests of a key (9) cannot be above its tenant&#x27;s (4)." in (
        refused.content.decode()
    )
    assert saved.status_code == 302
    assert ApiKey.objects.get(pk=key.pk).max_concurrent_requests == 3
