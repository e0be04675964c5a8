"""A tenant that requires single sign-on: its members' passwords open nothing (the portal's and
the admin's forms refuse them, password reset sends nothing and old links stop working), while
everyone else signs in as before; with single sign-on unconfigured its pages do not exist."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core import mail
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from tenants import services

pytestmark = pytest.mark.django_db

REFUSED = "Your organisation signs in through single sign-on"


@pytest.fixture
def acme_requires_sso(settings, acme):
    settings.SSO_ENABLED = True  # the validation asks; these pages do not
    return services.tenant_update(tenant=acme, sso_required=True)


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_the_password_form_refuses_members_of_such_a_tenant(client, bob, charlie,
                                                             acme_requires_sso):  # fmt: skip
    response = client.post("/portal/login/", {"username": "bob", "password": "pw-bob-123"})
    assert response.status_code == 200
    assert REFUSED in response.content.decode()
    assert not signed_in(client)

    # A wrong password is still just wrong: the refusal tells nothing to whoever guesses.
    response = client.post("/portal/login/", {"username": "bob", "password": "nope"})
    assert REFUSED not in response.content.decode()

    # Members of other tenants are not affected.
    response = client.post("/portal/login/", {"username": "charlie", "password": "pw-ch-123"})
    assert response.status_code == 302
    assert signed_in(client)


def test_the_admin_password_form_refuses_them_too(client, bob, acme_requires_sso):
    operator = get_user_model().objects.create_superuser("op", "op@example.com", "pw-op-123")
    response = client.post("/admin/login/?next=/admin/",
                           {"username": "op", "password": "pw-op-123"})  # fmt: skip
    assert response.status_code == 302  # staff outside such a tenant sign in as before
    assert client.session["_auth_user_id"] == str(operator.pk)
    client.logout()

    bob.is_staff = True
    bob.save()
    response = client.post("/admin/login/?next=/admin/",
                           {"username": "bob", "password": "pw-bob-123"})  # fmt: skip
    assert response.status_code == 200
    assert REFUSED in response.content.decode()
    assert not signed_in(client)


def test_password_reset_is_refused_for_them(client, bob, charlie, acme_requires_sso):
    link = f"/portal/password/reset/{urlsafe_base64_encode(force_bytes(bob.pk))}/"
    old_link = f"{link}{default_token_generator.make_token(bob)}/"

    response = client.post("/portal/password/reset/", {"email": "bob@example.com"})
    assert response.status_code == 302  # the same answer as for anyone: no account is confirmed
    assert not mail.outbox

    response = client.get(old_link, follow=True)
    assert response.context["validlink"] is False

    client.post("/portal/password/reset/", {"email": "charlie@example.com"})
    (message,) = mail.outbox
    assert message.to == ["charlie@example.com"]


def test_without_sso_configured_there_are_no_sso_pages(client, settings):
    settings.SSO_ENABLED = False
    assert client.get("/portal/sso/login/").status_code == 404
    assert client.get("/portal/sso/callback/?code=x&state=y").status_code == 404
    assert "single sign-on" not in client.get("/portal/login/").content.decode()
