"""The portal's and the admin's pages carry a Content-Security-Policy that lets their own
scripts (htmx, Chart.js, ours) run and refuses any other: an injected inline script or event
handler does not run. Before, no policy was sent and any injected script ran. Headless
Chromium visits the pages and reports every violation."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from models_mgmt.models import Placement
from models_mgmt.placements import node_add
from models_mgmt.services import model_register
from tenants import services
from tenants.models import Membership
from tests.billing.factories import event, store
from tests.browser import open_page, sign_in

pytestmark = pytest.mark.django_db(transaction=True)

RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.__violations.push(`${e.effectiveDirective} ${e.blockedURI}`));
"""
PORTAL_PAGES = ["/portal/", "/portal/keys/", "/portal/usage/", "/portal/invoices/",
                "/portal/invoices/current/", "/portal/members/"]  # fmt: skip


@pytest.fixture
def site(gateway):
    tenant = services.tenant_register(slug="acme", name="Acme")
    owner = get_user_model().objects.create_user("ann", "ann@example.com", "ann-pass-1234")
    services.membership_set(tenant=tenant, user=owner, role=Membership.Role.OWNER)
    get_user_model().objects.create_superuser("op", "op@example.com", "operator-pass-1")
    now = datetime.now(tz=UTC)
    store(*(event(tenant, model="smol", at=now - timedelta(days=n)) for n in range(3)))
    node = node_add(name="gpu-1", vram_bytes=1_000_000)
    model = model_register(model_id="smol", engine="local", vram_bytes=1000)
    Placement.objects.create(node=node, model=model, state="ready", vram_bytes=1000)
    return {"tenant": tenant, "node": node}


@pytest.fixture
def watched(browser, gateway):
    with open_page(browser, gateway.url) as page:
        page.add_init_script(RECORD_VIOLATIONS)  # init scripts are not subject to the policy
        yield page


def _visit(page, path: str) -> list[str]:
    response = page.goto(path)
    assert response.ok, (path, response.status)
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    page.wait_for_load_state("networkidle")
    return page.evaluate("window.__violations")


def test_the_portals_own_pages_run_under_the_policy_without_a_violation(watched, site):
    sign_in(watched, "ann", "ann-pass-1234")
    expect(watched.get_by_role("heading", name="Acme")).to_be_visible()

    violations = {path: _visit(watched, path) for path in PORTAL_PAGES}
    # htmx (an in-place update) and Chart.js (a drawn chart) really ran.
    watched.goto("/portal/usage/")
    watched.locator("#id_model").select_option("smol")
    expect(watched.locator("#usage-results canvas")).to_have_attribute("data-drawn", "1")
    violations["usage, updated in place"] = watched.evaluate("window.__violations")

    assert all(found == [] for found in violations.values()), violations


def test_the_admins_pages_run_under_the_policy_without_a_violation(watched, site):
    watched.goto("/admin/login/?next=/admin/")
    watched.get_by_label("Username").fill("op")
    watched.get_by_label("Password").fill("operator-pass-1")
    watched.get_by_role("button", name="Log in").click()
    watched.wait_for_url("**/admin/")
    tenant, node = site["tenant"].pk, site["node"].pk
    pages = ["/admin/", "/admin/tenants/tenant/", f"/admin/tenants/tenant/{tenant}/change/",
             "/admin/tenants/apikey/", "/admin/models_mgmt/node/",
             f"/admin/models_mgmt/node/{node}/change/", "/admin/billing/dailyusage/",
             "/admin/billing/invoice/", "/admin/models_mgmt/servedmodel/add/"]  # fmt: skip

    violations = {path: _visit(watched, path) for path in pages}
    watched.goto(f"/admin/tenants/tenant/{tenant}/change/")
    expect(watched.locator("canvas[data-chart]").first).to_have_attribute("data-drawn", "1")

    assert all(found == [] for found in violations.values()), violations


def test_an_injected_script_or_handler_does_not_run(watched, site):
    sign_in(watched, "ann", "ann-pass-1234")
    expect(watched.get_by_role("heading", name="Acme")).to_be_visible()

    watched.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.__pwned = 'inline script'";
        document.body.appendChild(script);
        document.body.insertAdjacentHTML("beforeend",
            "<img src='/static/missing.png' onerror=\\"window.__pwned = 'event handler'\\">");
        const link = document.createElement("a");
        link.href = "javascript:window.__pwned = 'javascript: URL'";
        document.body.appendChild(link);
        link.click();
    }""")
    watched.wait_for_function("window.__violations.length >= 3")

    assert watched.evaluate("window.__pwned") is None
    directives = {v.split()[0] for v in watched.evaluate("window.__violations")}
    assert directives <= {"script-src-elem", "script-src-attr", "script-src"}
