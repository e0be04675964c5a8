"""The portal end to end in headless Chromium against the running server: a member signs in,
creates a key and sees it once, calls the API with it through the `openai` client, sees the
usage appear, revokes the key and sees the next call refused, and downloads an invoice PDF.
Each page is saved under test-output/screenshots/."""

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from billing import credits
from billing.invoices import invoice_close
from billing.ledger import ledger_drain
from billing.models import UsageRecord
from billing.pricing import price_set
from tenants import services
from tenants.invitations import invitation_create
from tenants.models import Membership
from tests.billing.factories import event, store
from tests.browser import assert_accessible, open_page, screenshot, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def member(catalog):
    tenant = services.tenant_register(slug="initech", name="Initech", monthly_budget=50,
                                      max_requests_per_minute=600)  # fmt: skip
    user = get_user_model().objects.create_user("peter", "peter@initech.example", "tps-report-9")
    services.membership_set(tenant=tenant, user=user, role=Membership.Role.OWNER)
    price_set(model_id="fake", input_per_million=Decimal("2.50"), output_per_million=Decimal(10),
              effective_from=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    return tenant


def _ledger_rows(tenant, expected: int, timeout: float = 10.0) -> int:
    # What the billing worker does every few seconds, done here so the test needn't wait.
    deadline = time.monotonic() + timeout
    while True:
        ledger_drain()
        count = UsageRecord.objects.filter(tenant=tenant).count()
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def test_a_member_creates_uses_and_revokes_a_key(page, gateway, member):
    sign_in(page, "peter", "tps-report-9")
    expect(page.get_by_role("heading", name="Initech")).to_be_visible()
    expect(page.get_by_text("No usage this month yet")).to_be_visible()
    screenshot(page, "portal-overview-empty")
    assert_accessible(page)

    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_text("No keys yet")).to_be_visible()
    page.get_by_label("Name").fill("browser test")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_text("this is the only time it is shown")).to_be_visible()
    key = page.locator("#new-key").input_value()
    assert key.startswith("sk-")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).not_to_be_empty()
    screenshot(page, "portal-key-created", hide=[page.locator("#new-key")])
    assert_accessible(page)

    page.get_by_role("link", name="API keys").click()
    assert key not in page.content()  # shown once only
    expect(page.get_by_text("never").first).to_be_visible()  # not used yet

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="fake", messages=[{"role": "user", "content":
                                           "hello"}])  # fmt: skip
    assert reply.usage.total_tokens > 0
    assert _ledger_rows(member, 1) == 1

    page.get_by_role("link", name="Overview").click()
    expect(page.locator("canvas#usage-by-day")).to_be_visible()
    expect(page.get_by_text("· 1 request")).to_be_visible()
    screenshot(page, "portal-overview")
    assert_accessible(page)

    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("cell", name="fake", exact=True)).to_be_visible()
    expect(page.locator("canvas#usage-chart")).to_be_visible()
    screenshot(page, "portal-usage")
    assert_accessible(page)
    page.get_by_label("Model (optional)").select_option("fake")  # htmx updates the results in place
    page.wait_for_url("**model=fake**")
    expect(page.get_by_role("cell", name="fake", exact=True)).to_be_visible()
    page.get_by_label("From", exact=True).fill("2030-01-01")
    expect(page.get_by_text("Pick a day on or after the start.")).to_be_visible()
    page.get_by_label("From", exact=True).fill(timezone.now().date().replace(day=1).isoformat())
    expect(page.get_by_role("cell", name="fake", exact=True)).to_be_visible()
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download per-request CSV").click()
    csv_text = download_info.value.path().read_text()
    assert f",fake,{key[:11]}," in csv_text

    page.get_by_role("link", name="API keys").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Revoke {key[:11]}").click()
    expect(page.get_by_text("Revoked", exact=True)).to_be_visible()
    screenshot(page, "portal-keys")
    assert_accessible(page)
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
    assert _ledger_rows(member, 1) == 1  # the refused call is not billed


def test_a_member_downloads_an_invoice_pdf(page, gateway, member):
    last_month = (timezone.now().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    store(event(member, model="fake", prompt=1_200_000, completion=800_000,
                at=datetime(last_month.year, last_month.month, 5, tzinfo=UTC)))  # fmt: skip
    invoice = invoice_close(tenant=member, period=last_month)

    sign_in(page, "peter", "tps-report-9")
    page.get_by_role("link", name="Invoices").click()
    screenshot(page, "portal-invoices")
    assert_accessible(page)
    page.get_by_role("link", name=invoice.number).click()
    expect(page.get_by_role("heading", name=f"Invoice {invoice.number}")).to_be_visible()
    expect(page.get_by_text("11.00 USD")).to_be_visible()  # 1.2M in at 2.50 + 0.8M out at 10
    screenshot(page, "portal-invoice")
    assert_accessible(page)
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download PDF").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".pdf")
    assert download.path().read_bytes().startswith(b"%PDF")

    page.get_by_role("link", name="Members").click()
    expect(page.get_by_role("cell", name="peter@initech.example (you)")).to_be_visible()
    screenshot(page, "portal-members")
    assert_accessible(page)


def test_a_member_sees_prepaid_credits_drawn_and_applied(page, gateway, member):
    credits.credits_grant(tenant=member, amount=Decimal(5), reason="Prepaid pilot",
                          expires=timezone.now().date() + timedelta(days=60))  # fmt: skip
    store(event(member, model="fake", prompt=1_200_000, completion=800_000))  # 11.00 of usage

    sign_in(page, "peter", "tps-report-9")
    page.get_by_role("link", name="Credits").click()
    expect(page.get_by_role("heading", name="Prepaid credits")).to_be_visible()
    expect(page.locator("[data-credit-balance]")).to_have_text("0.00 USD")
    expect(page.get_by_role("cell", name="Prepaid pilot")).to_be_visible()
    expect(page.locator("[data-credit-uses] tbody tr")).to_have_count(1)
    screenshot(page, "portal-credits")
    assert_accessible(page)
    page.get_by_role("link", name="Invoices").click()
    page.get_by_role("link", name="See the lines").click()
    expect(page.locator("[data-credits-applied]")).to_have_text("\N{MINUS SIGN}5.00 USD")
    expect(page.locator("[data-amount-due]")).to_have_text("6.00 USD")
    screenshot(page, "portal-invoice-credits")
    assert_accessible(page)


def test_sign_in_errors_and_the_tenant_chooser(page, gateway, member, acme):
    sign_in(page, "peter", "wrong password")
    expect(page.get_by_text("Please enter a correct username and password")).to_be_visible()
    screenshot(page, "portal-login-error")
    assert_accessible(page)
    services.membership_set(tenant=acme, user=get_user_model().objects.get(username="peter"))
    sign_in(page, "peter", "tps-report-9")
    expect(page.get_by_role("heading", name="Choose a tenant")).to_be_visible()
    screenshot(page, "portal-choose-tenant")
    assert_accessible(page)
    page.get_by_role("button", name="Acme Corp").click()
    expect(page.get_by_role("heading", name="Acme Corp")).to_be_visible()
    expect(page.get_by_role("link", name="Members")).to_have_count(0)  # a member, not owner


def test_pages_fit_a_phone_screen(page, gateway, member):
    services.apikey_issue(tenant=member, name="a key with a long descriptive name for the phone")
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, "peter", "tps-report-9")
    for name, path in [("overview", "/portal/"), ("keys", "/portal/keys/"),
                       ("usage", "/portal/usage/"), ("invoices", "/portal/invoices/"),
                       ("members", "/portal/members/"),
                       ("credits", "/portal/credits/")]:  # fmt: skip
        page.goto(path)
        # Wide tables scroll inside their own box; the page itself never scrolls sideways.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)
        assert_accessible(page)
        screenshot(page, f"portal-phone-{name}")


def test_an_owner_invites_and_the_invited_person_accepts(page, browser, gateway, member):
    sign_in(page, "peter", "tps-report-9")
    page.get_by_role("link", name="Members").click()
    page.get_by_label("Email").fill("milton@initech.example")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.get_by_text("they join once they accept the emailed link")).to_be_visible()
    expect(page.get_by_role("cell", name="milton@initech.example", exact=True)).to_be_visible()
    screenshot(page, "portal-members-invited")
    assert_accessible(page)
    assert not get_user_model().objects.filter(email="milton@initech.example").exists()

    # The emailed link (the session's server keeps its mail in memory: a second invitation
    # made here, which replaces the first, gives the test its token).
    issued = invitation_create(tenant=member, email="milton@initech.example")
    with open_page(browser, gateway.url) as invited:
        invited.goto(f"/portal/invitations/{issued.token}/")
        expect(invited.get_by_role("heading", name="Join Initech")).to_be_visible()
        screenshot(invited, "portal-invitation")
        assert_accessible(invited)
        invited.get_by_label("New password", exact=True).fill("red-stapler-1979")
        invited.get_by_label("New password confirmation").fill("red-stapler-1979")
        invited.get_by_role("button", name="Make my account and join").click()
        expect(invited.get_by_text("You are now a member of Initech.")).to_be_visible()
        expect(invited.get_by_role("heading", name="Initech")).to_be_visible()

    milton = get_user_model().objects.get(email="milton@initech.example")
    assert Membership.objects.get(tenant=member, user=milton).role == Membership.Role.MEMBER
