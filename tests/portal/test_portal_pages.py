"""The portal's pages through Django's test client, on PostgreSQL: what a member sees and can
do, and what is refused with a form error."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.utils import timezone

from billing.invoices import invoice_close
from billing.models import UsageRecord
from tenants import services
from tenants.apikeys import key_digest
from tenants.errors import RevokedApiKey
from tenants.models import ApiKey, Membership
from tests.billing.factories import event, store
from tests.portal.conftest import sign_in_client

pytestmark = pytest.mark.django_db

KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9]{58}")


def test_anonymous_visitors_are_sent_to_sign_in(client):
    response = client.get("/portal/keys/")
    assert response.status_code == 302
    assert response["Location"].startswith("/portal/login/?next=/portal/keys/")


def test_signing_in_with_one_tenant_lands_on_its_overview(client, alice, acme):
    response = client.post("/portal/login/", {"username": "alice", "password": "pw-alice-123"},
                           follow=True)  # fmt: skip
    assert response.status_code == 200
    assert response.request["PATH_INFO"] == "/portal/"
    assert b"Acme Corp" in response.content
    assert b"No usage this month yet" in response.content


def test_a_wrong_password_is_a_form_error(client, alice):
    response = client.post("/portal/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content
    assert "_auth_user_id" not in client.session


def test_repeated_failures_lock_the_sign_in_out(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/portal/login/", {"username": "alice", "password": "wrong"})
    response = client.post("/portal/login/", {"username": "alice", "password": "pw-alice-123"})
    assert response.status_code == 429
    assert b"Too many failed sign-ins" in response.content
    assert "_auth_user_id" not in client.session


def test_a_member_of_several_tenants_picks_one(client, alice, acme, globex):
    services.membership_set(tenant=globex, user=alice, role=Membership.Role.MEMBER)
    client.force_login(alice)
    response = client.get("/portal/keys/")
    assert response.status_code == 302
    assert response["Location"].startswith("/portal/tenants/")
    response = client.post("/portal/tenants/", {"tenant": globex.pk, "next": "/portal/keys/"})
    assert response["Location"] == "/portal/keys/"
    assert b"Globex" in client.get("/portal/keys/").content


def test_picking_a_tenant_one_is_not_a_member_of_is_refused(client, alice, acme, globex):
    client.force_login(alice)
    response = client.post("/portal/tenants/", {"tenant": globex.pk})
    assert b"Pick one of your tenants." in response.content
    assert client.session.get("portal_tenant_id") != globex.pk


def test_the_chooser_never_redirects_off_the_portal(client, alice, acme):
    client.force_login(alice)
    response = client.post("/portal/tenants/", {"tenant": acme.pk, "next": "https://evil.test/"})
    assert response["Location"] == "/portal/"


def test_a_new_key_is_shown_once_and_only_its_digest_is_kept(alice_client, acme):
    response = alice_client.post("/portal/keys/", {"name": "web app", "expires_on": ""})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    shown = KEY_PATTERN.findall(response.content.decode())
    assert len(set(shown)) == 1
    key = ApiKey.objects.get(tenant=acme, name="web app")
    assert key.digest == key_digest(shown[0])
    assert services.tenant_for_key(shown[0]).tenant == acme
    assert not KEY_PATTERN.search(alice_client.get("/portal/keys/").content.decode())


def test_a_key_with_an_expiry_works_through_that_day(alice_client, acme):
    day = timezone.now().date() + timedelta(days=3)
    alice_client.post("/portal/keys/", {"name": "ci", "expires_on": day.isoformat()})
    key = ApiKey.objects.get(tenant=acme, name="ci")
    assert key.expires_at == datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"name": ""}, b"This field is required."),
        ({"name": "x" * 101}, b"Ensure this value has at most 100 characters"),
        ({"name": "old", "expires_on": "2001-01-01"}, b"Pick today or a later day."),
        ({"name": "bad", "expires_on": "not-a-date"}, b"Enter a valid date."),
    ],
)
def test_a_bad_key_form_is_a_form_error_and_issues_nothing(alice_client, acme, data, error):
    response = alice_client.post("/portal/keys/", data)
    assert response.status_code == 400
    assert error in response.content
    assert not ApiKey.objects.filter(tenant=acme).exists()


@pytest.mark.django_db(transaction=True)  # the cached lookup is dropped on commit
def test_revoking_a_key_refuses_it_at_once(alice_client, acme):
    issued = services.apikey_issue(tenant=acme, name="doomed")
    services.tenant_for_key(issued.plaintext)  # cached as valid
    response = alice_client.post(f"/portal/keys/{issued.api_key.pk}/revoke/",
                                 headers={"HX-Request": "true"})  # fmt: skip
    assert response.status_code == 200
    assert b"Revoked" in response.content
    assert b"<tr" in response.content
    assert b"<html" not in response.content
    with pytest.raises(RevokedApiKey):
        services.tenant_for_key(issued.plaintext)


def test_rotating_shows_the_new_key_and_keeps_the_old_for_the_grace(alice_client, acme):
    old = services.apikey_issue(tenant=acme, name="svc")
    response = alice_client.post(f"/portal/keys/{old.api_key.pk}/rotate/")
    new_keys = set(KEY_PATTERN.findall(response.content.decode()))
    assert len(new_keys) == 1
    assert old.plaintext not in new_keys
    assert services.tenant_for_key(new_keys.pop()).tenant == acme
    assert services.tenant_for_key(old.plaintext).tenant == acme  # still within its grace
    old.api_key.refresh_from_db()
    assert old.api_key.expires_at is not None


def test_usage_page_shows_the_ledger_by_day_and_model(alice_client, acme, globex):
    today = timezone.now()
    store(event(acme, model="llama", prompt=100, completion=50, at=today),
          event(acme, model="mistral", prompt=7, completion=3, at=today),
          event(globex, model="llama", prompt=999, completion=999, at=today))  # fmt: skip
    response = alice_client.get("/portal/usage/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "llama" in body
    assert "mistral" in body
    assert '<td class="num">100</td><td class="num">50</td>' in body
    assert "1,998" not in body
    assert "999" not in body
    day = today.date().isoformat()
    query = {"start": day, "end": day, "model": "mistral"}
    filtered = alice_client.get("/portal/usage/", query).content.decode()
    assert "mistral" in filtered
    assert "<td>llama</td>" not in filtered
    assert "<td>mistral</td>" in filtered


def test_a_bad_usage_period_is_a_form_error(alice_client, acme):
    response = alice_client.get("/portal/usage/", {"start": "2026-11-10", "end": "2026-11-01"})
    assert response.status_code == 400
    assert b"Pick a day on or after the start." in response.content


def test_usage_csv_has_the_tenants_requests_only(alice_client, acme, globex):
    at = timezone.now()
    store(event(acme, model="llama", at=at, request_id="req_acme_1"),
          event(acme, model="other", at=at, request_id="req_acme_2"),
          event(globex, model="llama", at=at, request_id="req_globex_1"))  # fmt: skip
    day = at.date().isoformat()
    response = alice_client.get("/portal/usage.csv", {"start": day, "end": day, "model": "llama"})
    body = b"".join(response.streaming_content).decode()
    assert response["Content-Type"].startswith("text/csv")
    assert "req_acme_1" in body
    assert "req_acme_2" not in body
    assert "req_globex_1" not in body


def test_invoices_list_and_downloads(alice_client, acme):
    last_month = (timezone.now().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    store(event(acme, at=datetime(last_month.year, last_month.month, 2, tzinfo=UTC)))
    invoice = invoice_close(tenant=acme, period=last_month)
    listing = alice_client.get("/portal/invoices/").content.decode()
    assert invoice.number in listing
    page = alice_client.get(f"/portal/invoices/{invoice.number}/").content.decode()
    assert str(invoice.total) in page
    pdf = alice_client.get(f"/portal/invoices/{invoice.number}/pdf")
    assert pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    csv = alice_client.get(f"/portal/invoices/{invoice.number}/csv")
    assert invoice.number.encode() in csv.content
    draft = alice_client.get("/portal/invoices/current/")
    assert draft.status_code == 200
    assert b"Draft for" in draft.content


def test_empty_states(alice_client, acme):
    assert b"No keys yet" in alice_client.get("/portal/keys/").content
    assert b"No invoices yet" in alice_client.get("/portal/invoices/").content
    assert b"No requests in this period" in alice_client.get("/portal/usage/").content
    assert b"Create an API key" in alice_client.get("/portal/").content


def test_only_owners_manage_members(client, bob, acme):
    sign_in_client(client, bob, acme)
    assert client.get("/portal/members/").status_code == 403
    assert client.post("/portal/members/", {"email": "eve@example.com"}).status_code == 403
    assert not get_user_model().objects.filter(email="eve@example.com").exists()
    assert b"/portal/members/" not in client.get("/portal/").content


def test_inviting_a_new_person_emails_a_link_that_makes_their_account(client, alice, acme):
    sign_in_client(client, alice, acme)
    response = client.post("/portal/members/", {"email": "Dana@Example.com", "role": "member"})
    assert response.status_code == 302
    # Nothing exists until Dana accepts: no account, no membership.
    assert not get_user_model().objects.filter(email__iexact="dana@example.com").exists()
    (message,) = mail.outbox
    assert message.to == ["Dana@example.com"]
    link = re.search(r"http://127\.0\.0\.1:8000(/portal/invitations/\S+/)", message.body).group(1)
    client.logout()
    form = client.get(link)
    assert b"Choose a password for your new account" in form.content
    passwords = {"new_password1": "a-long-pass-phrase-42", "new_password2": "a-long-pass-phrase-42"}
    done = client.post(link, passwords)
    assert done.status_code == 302
    dana = get_user_model().objects.get(email__iexact="dana@example.com")
    assert dana.check_password("a-long-pass-phrase-42")
    assert Membership.objects.filter(tenant=acme, user=dana, role="member").exists()
    assert client.get("/portal/").status_code == 200  # signed in, in acme
    assert client.post(link, passwords).status_code == 404  # the link worked once


def test_an_owner_sees_and_cancels_an_open_invitation(client, alice, acme):
    sign_in_client(client, alice, acme)
    client.post("/portal/members/", {"email": "gus@example.com", "role": "owner"})
    page = client.get("/portal/members/").content.decode()
    assert "gus@example.com" in page
    invitation = acme.invitations.get()
    client.post(f"/portal/members/invitations/{invitation.pk}/cancel/")
    assert not acme.invitations.exists()
    link = re.search(r"(/portal/invitations/\S+/)", mail.outbox[0].body).group(1)
    client.logout()
    assert client.get(link).status_code == 404


def test_inviting_someone_already_in_is_a_form_error(client, alice, bob, acme):
    sign_in_client(client, alice, acme)
    response = client.post("/portal/members/", {"email": "bob@example.com", "role": "member"})
    assert response.status_code == 400
    assert b"They are already a member." in response.content
    assert not mail.outbox


def test_the_last_owner_cannot_be_demoted_or_removed(client, alice, bob, acme):
    sign_in_client(client, alice, acme)
    mine = Membership.objects.get(tenant=acme, user=alice)
    response = client.post(f"/portal/members/{mine.pk}/role/", {"role": "member"}, follow=True)
    assert b"needs at least one owner" in response.content
    response = client.post(f"/portal/members/{mine.pk}/remove/", follow=True)
    assert b"needs at least one owner" in response.content
    mine.refresh_from_db()
    assert mine.role == Membership.Role.OWNER


def test_an_owner_changes_a_role_and_removes_a_member(client, alice, bob, acme):
    sign_in_client(client, alice, acme)
    bobs = Membership.objects.get(tenant=acme, user=bob)
    client.post(f"/portal/members/{bobs.pk}/role/", {"role": "owner"})
    bobs.refresh_from_db()
    assert bobs.role == Membership.Role.OWNER
    client.post(f"/portal/members/{bobs.pk}/remove/")
    assert not Membership.objects.filter(pk=bobs.pk).exists()
    assert get_user_model().objects.filter(pk=bob.pk).exists()  # the account stays


def test_password_reset_sends_a_link(client, alice):
    response = client.post("/portal/password/reset/", {"email": "alice@example.com"})
    assert response.status_code == 302
    (message,) = mail.outbox
    assert "/portal/password/reset/" in message.body
    assert not UsageRecord.objects.exists()


def test_password_change(client, alice, acme):
    sign_in_client(client, alice, acme)
    response = client.post("/portal/password/change/", {
        "old_password": "pw-alice-123", "new_password1": "another-long-phrase-7",
        "new_password2": "another-long-phrase-7"})  # fmt: skip
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("another-long-phrase-7")


def test_overview_shows_spend_against_the_budget(alice_client, acme):
    services.tenant_update(tenant=acme, monthly_budget=10)
    store(event(acme, prompt=1000, completion=500))
    body = alice_client.get("/portal/").content.decode()
    assert "of the 10" in body
    assert "1,500" in body  # tokens this month


def test_a_member_without_a_password_yet_can_ask_for_a_link(client, acme):
    """Accounts made by invitations before they had to be accepted have no password until
    their person sets one: the reset form still serves them."""
    erin = get_user_model().objects.create_user("erin", "erin@example.com")
    erin.set_unusable_password()
    erin.save()
    services.membership_set(tenant=acme, user=erin)
    client.post("/portal/password/reset/", {"email": "erin@example.com"})
    (message,) = mail.outbox
    assert message.to == ["erin@example.com"]


def test_an_account_disabled_outside_any_tenant_gets_no_reset_link(client, db):
    user = get_user_model().objects.create_user("frank", "frank@example.com")
    user.set_unusable_password()
    user.save()
    client.post("/portal/password/reset/", {"email": "frank@example.com"})
    assert not mail.outbox
