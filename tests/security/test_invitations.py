"""An owner could add any existing account to their tenant: inviting its email made it a member
at once (the superuser's too). Now an invitation is only an offer: the person at that address
accepts it from the emailed link, signed in as themselves; staff accounts cannot be invited."""

import re
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from django.contrib.auth import get_user_model

from tenants import services
from tenants.models import Invitation, Membership
from tests.security.conftest import own_gateway, post_form, sent_mail

FILE_MAIL = "django.core.mail.backends.filebased.EmailBackend"


@pytest.fixture
def portal(transactional_db, tmp_path):
    mail = tmp_path / "mail"
    with own_gateway(tmp_path, EMAIL_BACKEND=FILE_MAIL, EMAIL_FILE_PATH=str(mail),
                     SITE_URL="https://portal.example.com") as gateway:  # fmt: skip
        gateway.mail = mail
        yield gateway


@pytest.fixture
def people(portal):
    users = get_user_model().objects
    acme = services.tenant_register(slug="acme", name="Acme")
    globex = services.tenant_register(slug="globex", name="Globex")
    alice = users.create_user("alice", "alice@example.com", "alice-pass-123")
    charlie = users.create_user("charlie", "charlie@example.com", "charlie-pass-123")
    services.membership_set(tenant=acme, user=alice, role=Membership.Role.OWNER)
    services.membership_set(tenant=globex, user=charlie, role=Membership.Role.OWNER)
    users.create_superuser("root", "ops@example.com", "operator-pass-1")
    return {"acme": acme, "alice": alice, "charlie": charlie}


@contextmanager
def _client(portal, username=None, password=None):
    with httpx.Client(base_url=portal.url) as client:
        if username:
            signed_in = post_form(client, "/portal/login/", {"username": username,
                                                              "password": password})  # fmt: skip
            assert signed_in.status_code == 302
        yield client


def _invitation_path(message) -> str:
    link = re.search(r"https://portal\.example\.com(/portal/invitations/\S+/)", message.body)
    assert link, message.body
    return link.group(1)


def test_inviting_an_existing_account_makes_no_member_until_its_person_accepts(portal, people):
    acme, charlie = people["acme"], people["charlie"]
    with _client(portal, "alice", "alice-pass-123") as alice:
        invited = post_form(alice, "/portal/members/", {"email": "charlie@example.com",
                                                         "role": "owner"})  # fmt: skip
        (message,) = sent_mail(portal.mail)
        path = _invitation_path(message)
        # The inviter holding the link cannot accept it for charlie.
        by_alice = post_form(alice, path, {})
    with _client(portal) as stranger:
        anonymous_page = stranger.get(path)
        passwords = {"new_password1": "a-long-pass-phrase-42",
                     "new_password2": "a-long-pass-phrase-42"}  # fmt: skip
        anonymous = post_form(stranger, path, passwords, token_from="/portal/login/")
    after_attempts = Membership.objects.filter(tenant=acme, user=charlie).exists()
    with _client(portal, "charlie", "charlie-pass-123") as charlie_client:
        page = charlie_client.get(path)
        accepted = post_form(charlie_client, path, {})
        again = post_form(charlie_client, path, {})

    assert invited.status_code == 302
    assert message.to == "charlie@example.com"
    assert by_alice.status_code == 403
    assert "sign in" in anonymous_page.text  # an account exists: it must sign in, not make one
    assert anonymous.status_code == 200  # the same "sign in" page: no account is made
    assert get_user_model().objects.filter(email="charlie@example.com").count() == 1
    assert not after_attempts
    assert "Accept and join" in page.text
    assert accepted.status_code == 302
    assert Membership.objects.get(tenant=acme, user=charlie).role == "owner"
    assert again.status_code == 404  # once only


def test_the_superusers_address_cannot_be_invited(portal, people):
    with _client(portal, "alice", "alice-pass-123") as alice:
        refused = post_form(alice, "/portal/members/", {"email": "OPS@example.com",
                                                         "role": "owner"})  # fmt: skip

    assert refused.status_code == 400
    assert "operators are added to tenants in the admin" in refused.text
    assert not Invitation.objects.exists()
    assert sent_mail(portal.mail) == []
    root = get_user_model().objects.get(username="root")
    assert not Membership.objects.filter(user=root).exists()


def test_an_invitation_accepted_as_someone_who_became_staff_is_refused(portal, people):
    with _client(portal, "alice", "alice-pass-123") as alice:
        post_form(alice, "/portal/members/", {"email": "charlie@example.com", "role": "member"})
    path = _invitation_path(sent_mail(portal.mail)[0])
    get_user_model().objects.filter(username="charlie").update(is_staff=True)
    with _client(portal, "charlie", "charlie-pass-123") as charlie_client:
        refused = post_form(charlie_client, path, {})

    assert refused.status_code == 400
    assert not Membership.objects.filter(tenant=people["acme"], user=people["charlie"]).exists()


def test_a_new_person_makes_their_account_from_the_link_which_then_expires(portal, people):
    with _client(portal, "alice", "alice-pass-123") as alice:
        post_form(alice, "/portal/members/", {"email": "dana@example.com", "role": "member"})
        post_form(alice, "/portal/members/", {"email": "erin@example.com", "role": "member"})
    dana_path, erin_path = (_invitation_path(m) for m in sent_mail(portal.mail))
    Invitation.objects.filter(email="erin@example.com").update(
        created_at=Invitation.objects.get(email="erin@example.com").created_at
        - timedelta(days=3, seconds=1)  # PASSWORD_RESET_TIMEOUT's default
    )
    passwords = {"new_password1": "a-long-pass-phrase-42", "new_password2": "a-long-pass-phrase-42"}
    with _client(portal) as dana:
        joined = post_form(dana, dana_path, passwords)
        overview = dana.get("/portal/")
    with _client(portal) as erin:
        expired = erin.get(erin_path)

    assert joined.status_code == 302
    assert "Acme" in overview.text
    dana_user = get_user_model().objects.get(email="dana@example.com")
    assert Membership.objects.filter(tenant=people["acme"], user=dana_user).exists()
    assert expired.status_code == 404
    assert "expired" in expired.text
    assert not get_user_model().objects.filter(email="erin@example.com").exists()
