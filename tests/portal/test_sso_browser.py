"""Single sign-on end to end in headless Chromium: a real OpenID provider (node's oidc-provider,
tests/oidc/) and the server configured for it. A member signs in to the portal and staff to the
admin through the provider; memberships and roles follow the provider's claims at each sign-in;
signing out ends the provider's session too; a tenant that requires single sign-on refuses the
password form; a replayed or forged callback is refused."""

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from tenants import services
from tenants.models import Membership, Tenant
from tests.browser import assert_accessible, open_page, screenshot, sign_in
from tests.oidc.server import STAFF_GROUP, sso_site

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def site(django_db_setup, tmp_path_factory):
    with sso_site(tmp_path_factory.mktemp("sso")) as running_site:
        yield running_site


@pytest.fixture
def sso_page(browser, site):
    with open_page(browser, site.url) as page:
        # The provider's development pages import a web font: nothing leaves this machine.
        page.context.route(re.compile(r"^https?://(?!127\.0\.0\.1|localhost)"),
                           lambda route: route.abort())  # fmt: skip
        yield page


def provider_sign_in(page, login: str) -> None:
    """At the provider's sign-in form (its development form takes any password)."""
    expect(page.get_by_role("heading", name="Sign-in")).to_be_visible()
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any")
    page.get_by_role("button", name="Sign-in").click()


def portal_sso_sign_in(page, login: str | None) -> None:
    page.goto("/portal/login/")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    if login is not None:  # None: the provider still has a session, no form
        provider_sign_in(page, login)


def sign_out(page) -> None:
    page.get_by_role("button", name="Sign out").click()
    # RP-initiated logout: the provider asks, then sends the browser back to our sign-in.
    page.get_by_role("button", name="Yes, sign me out").click()
    expect(page).to_have_url(re.compile(r"/portal/login/$"))


def roles_of(email: str) -> dict[str, str]:
    return dict(Membership.objects.filter(user__email=email).values_list("tenant__slug", "role"))


def test_member_signs_in_and_the_providers_claims_decide_at_each_sign_in(sso_page, site):
    page = sso_page
    services.tenant_register(slug="acme", name="Acme Corp")
    services.tenant_register(slug="globex", name="Globex")
    site.set_users({"ada": {"email": "ada@acme.example", "groups": ["tenant:acme:member"]}})

    portal_sso_sign_in(page, "ada")
    expect(page.get_by_role("heading", name="Acme Corp")).to_be_visible()
    expect(page.get_by_role("link", name="Members")).to_have_count(0)  # a member, not an owner
    expect(page.get_by_role("link", name="Password")).to_have_count(0)  # they have none here
    screenshot(page, "sso-portal-member")
    assert roles_of("ada@acme.example") == {"acme": "member"}
    ada = get_user_model().objects.get(email="ada@acme.example")
    assert not ada.has_usable_password()
    assert not ada.is_staff

    # Promoted and given a second tenant at the provider: in effect at the next sign-in.
    groups = ["tenant:acme:owner", "tenant:globex:member", "other"]
    site.set_users({"ada": {"email": "ada@acme.example", "groups": groups}})
    assert roles_of("ada@acme.example") == {"acme": "member"}  # nothing changes before then
    sign_out(page)
    page.goto("/portal/")
    expect(page).to_have_url(re.compile(r"/portal/login/"))  # signed out here
    portal_sso_sign_in(page, "ada")  # and there: the provider asks again
    expect(page.get_by_role("heading", name="Choose a tenant")).to_be_visible()
    assert roles_of("ada@acme.example") == {"acme": "owner", "globex": "member"}

    # Taken out of every tenant at the provider: a clear page, no session, no memberships.
    site.set_users({"ada": {"email": "ada@acme.example", "groups": []}})
    sign_out(page)
    portal_sso_sign_in(page, "ada")
    expect(page.get_by_role("heading", name="No access here")).to_be_visible()
    screenshot(page, "sso-no-access")
    assert_accessible(page)
    assert roles_of("ada@acme.example") == {}
    page.goto("/portal/")
    expect(page).to_have_url(re.compile(r"/portal/login/"))


def test_someone_the_claims_give_nothing_gets_no_account(sso_page, site):
    services.tenant_register(slug="acme")
    site.set_users({"eve": {"email": "eve@elsewhere.example", "groups": ["tenant:nope:owner"]}})
    portal_sso_sign_in(sso_page, "eve")
    expect(sso_page.get_by_role("heading", name="No access here")).to_be_visible()
    assert not get_user_model().objects.filter(email="eve@elsewhere.example").exists()


def test_an_unverified_address_does_not_take_over_an_account(sso_page, site, alice):
    site.set_users({"mallory": {"email": "alice@example.com", "email_verified": False,
                                "groups": ["tenant:acme:owner"]}})  # fmt: skip
    portal_sso_sign_in(sso_page, "mallory")
    expect(sso_page.get_by_role("heading", name="Email address not verified")).to_be_visible()
    sso_page.goto("/portal/")
    expect(sso_page).to_have_url(re.compile(r"/portal/login/"))
    assert get_user_model().objects.count() == 1


def test_staff_sign_in_to_the_admin_through_the_provider(sso_page, site):
    page = sso_page
    site.set_users({"grace": {"email": "grace@operator.example", "groups": [STAFF_GROUP]}})
    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    page.get_by_role("link", name="Sign in with single sign-on").click()
    provider_sign_in(page, "grace")
    expect(page).to_have_url(re.compile(r"/admin/$"))
    expect(page.get_by_role("heading", name="Tenants, models, nodes and billing")).to_be_visible()
    screenshot(page, "sso-admin-staff")
    grace = get_user_model().objects.get(email="grace@operator.example")
    assert grace.is_staff
    assert grace.is_superuser

    # No longer staff at the provider: not staff here from the next sign-in.
    site.set_users({"grace": {"email": "grace@operator.example", "groups": []}})
    page.get_by_role("button", name="Log out").click()  # the admin's, the provider's too
    page.get_by_role("button", name="Yes, sign me out").click()
    expect(page).to_have_url(re.compile(r"/portal/login/$"))
    portal_sso_sign_in(page, "grace")
    expect(page.get_by_role("heading", name="No access here")).to_be_visible()
    grace.refresh_from_db()
    assert not grace.is_staff
    assert not grace.is_superuser


def test_a_tenant_that_requires_sso_refuses_the_password_form(sso_page, site, settings):
    page = sso_page
    settings.SSO_ENABLED = True  # as on the server under test (the validation asks)
    acme = services.tenant_register(slug="acme", name="Acme Corp")
    peter = get_user_model().objects.create_user("peter", "peter@acme.example", "tps-report-9")
    services.membership_set(tenant=acme, user=peter, role=Membership.Role.MEMBER)
    services.tenant_update(tenant=acme, sso_required=True)
    site.set_users({"peter": {"email": "peter@acme.example", "groups": ["tenant:acme:member"]}})

    sign_in(page, "peter", "tps-report-9")
    expect(page.get_by_text("Your organisation signs in through single sign-on")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/portal/login/"))
    screenshot(page, "sso-required-password-refused")
    assert_accessible(page)  # the sign-in page with its single sign-on button

    # The same account through the provider (matched by its email address) gets in.
    page.get_by_role("link", name="Sign in with single sign-on").click()
    provider_sign_in(page, "peter")
    expect(page.get_by_role("heading", name="Acme Corp")).to_be_visible()
    assert get_user_model().objects.filter(email="peter@acme.example").count() == 1

    # Without the requirement the password works again.
    sign_out(page)
    services.tenant_update(tenant=Tenant.objects.get(slug="acme"), sso_required=False)
    sign_in(page, "peter", "tps-report-9")
    expect(page.get_by_role("heading", name="Acme Corp")).to_be_visible()


def test_a_replayed_or_forged_callback_is_refused(browser, sso_page, site):
    page = sso_page
    services.tenant_register(slug="acme", name="Acme Corp")
    site.set_users({"ada": {"email": "ada@acme.example", "groups": ["tenant:acme:member"]}})
    callbacks: list[str] = []
    page.on("request", lambda request: callbacks.append(request.url)
            if "/portal/sso/callback/" in request.url else None)  # fmt: skip
    portal_sso_sign_in(page, "ada")
    expect(page.get_by_role("heading", name="Acme Corp")).to_be_visible()
    [callback] = callbacks

    # Replayed in the browser that used it: its state was spent.
    response = page.goto(callback)
    assert response.status == 400
    expect(page.get_by_role("heading", name="This sign-in cannot be completed")).to_be_visible()

    # Replayed in another browser (a stolen URL): no state of its own, nobody signed in.
    with open_page(browser, site.url) as other:
        response = other.goto(callback)
        assert response.status == 400
        other.goto("/portal/")
        expect(other).to_have_url(re.compile(r"/portal/login/"))

    # Forged: a state the browser never asked for; a code the provider never issued.
    with open_page(browser, site.url) as forger:
        forger.context.route(re.compile(r"^https?://(?!127\.0\.0\.1|localhost)"),
                             lambda route: route.abort())  # fmt: skip
        response = forger.goto("/portal/sso/callback/?code=made-up&state=made-up")
        assert response.status == 400
        authorizations: list[str] = []
        forger.on("request", lambda request: authorizations.append(request.url)
                  if request.url.startswith(f"{site.issuer}/auth?") else None)  # fmt: skip
        forger.goto("/portal/sso/login/")
        expect(forger.get_by_role("heading", name="Sign-in")).to_be_visible()
        state = parse_qs(urlsplit(authorizations[0]).query)["state"][0]
        response = forger.goto(f"/portal/sso/callback/?code=made-up&state={state}")
        assert response.status == 502  # the provider refuses a code it never issued
        expect(
            forger.get_by_role("heading", name="The identity provider refused the sign-in")
        ).to_be_visible()
        forger.goto("/portal/")
        expect(forger).to_have_url(re.compile(r"/portal/login/"))
    assert get_user_model().objects.count() == 1  # ada alone
