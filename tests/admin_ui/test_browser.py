"""The operator admin in a real browser (headless Chromium), against a real server whose node
tasks go through a Celery broker to a real node worker: a staff user signs in, suspends a
tenant (whose key the gateway then refuses), loads and evicts a model on a node, and visits
every admin page this app adds, saving screenshots (test-output/screenshots/admin-*.png)."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import openai
import pytest
import redis

from billing.invoices import invoice_close
from billing.pricing import price_set
from models_mgmt.models import Placement
from models_mgmt.placements import node_add
from models_mgmt.services import model_register
from tenants import services
from tests.admin_ui.conftest import OPERATOR_PASSWORD
from tests.billing.factories import event, store
from tests.browser import open_page, screenshot
from tests.gateway_server import gateway_env
from tests.models_mgmt.test_nodes_e2e import start_node_worker
from tests.servers import free_port, gateway_command, running

BROKER = "redis://127.0.0.1:6379/8"  # this suite's own broker database


@pytest.fixture
def admin_server(transactional_db, tmp_path):
    """The admin as production serves it, queueing node tasks on the broker, with node n1's
    worker consuming its queue."""
    redis.Redis.from_url(BROKER).flushdb()  # no task left over from an earlier run
    env = gateway_env(
        CELERY_BROKER_URL=BROKER, NODE_STATE_DIR=str(tmp_path / "nodes"), MIN_RESIDENCY_SECONDS="0"
    )
    node_add(name="n1", vram_bytes=2_000_000_000)
    worker = start_node_worker("n1", env, tmp_path / "n1.log")
    port = free_port()
    try:
        with running(
            gateway_command(port, workers=1),
            env=env,
            log=tmp_path / "admin.log",
            ready_url=f"http://127.0.0.1:{port}/healthz",
        ):
            yield f"http://127.0.0.1:{port}"
    finally:
        worker.terminate()
        worker.wait(timeout=30)


@pytest.fixture
def admin_page(browser, admin_server):
    with open_page(browser, admin_server, width=1440, height=900, timeout_ms=20_000) as page:
        yield page


def _usage(customer_tenant):
    """A month of usage for three tenants, a closed October, so every page has figures."""
    now = datetime.now(tz=UTC)
    for model_id, per_million in (("smol", 20), ("fake", 30), ("e5", 1)):
        price_set(
            model_id=model_id,
            input_per_million=Decimal(per_million),
            output_per_million=Decimal(per_million * 3),
            effective_from=now - timedelta(days=400),
        )
    globex = services.tenant_register(
        slug="globex", name="Globex", monthly_budget=Decimal("100.00")
    )
    initech = services.tenant_register(slug="initech", name="Initech")
    services.apikey_issue(tenant=globex, name="production")
    for n in range(30):
        day = now - timedelta(days=n)
        store(
            event(
                customer_tenant, at=day, model="smol", prompt=40_000 + 900 * n, completion=12_000
            ),
            event(globex, at=day, model="fake", prompt=90_000 - 2_000 * n, completion=30_000),
            event(initech, at=day, model="e5", prompt=8_000 + 300 * (n % 7), completion=0),
        )
        if n % 3 == 0:
            store(event(customer_tenant, at=day, model="fake", prompt=20_000, completion=9_000))
    invoice_close(tenant=customer_tenant, period=date(2026, 10, 1))
    invoice_close(tenant=globex, period=date(2026, 10, 1))


def test_operator_suspends_a_tenant_and_evicts_a_model_through_a_node_worker(
    admin_page, customer, operator
):
    page = admin_page
    services.tenant_update(tenant=customer.tenant, monthly_budget=Decimal("150.00"))
    _usage(customer.tenant)
    model_register(
        model_id="smol-node", engine="local", upstream_model="smollm2", vram_bytes=600_000_000
    )
    hi = [{"role": "user", "content": "hi"}]
    assert customer.client().chat.completions.create(model="fake", messages=hi, max_tokens=3)

    # Sign in.
    page.goto("/admin/login/?next=/admin/")
    page.get_by_label("Username").fill(operator.username)
    page.get_by_label("Password").fill(OPERATOR_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/admin/")

    # Tenants: the list with this month's usage and budget use; suspend acme from its page.
    page.goto("/admin/tenants/tenant/")
    assert page.locator("tr", has_text="globex").locator("meter").count() == 1
    screenshot(page, "admin-tenants")
    page.get_by_role("link", name="acme").first.click()
    page.locator("#tenant-usage-chart").wait_for()
    screenshot(page, "admin-tenant-detail")
    page.get_by_role("button", name="Suspend tenant").click()
    page.get_by_text("is suspended: its keys are refused").wait_for()
    assert page.get_by_role("button", name="Resume tenant").is_visible()

    with pytest.raises(openai.PermissionDeniedError) as refused:
        customer.client().chat.completions.create(model="fake", messages=hi, max_tokens=3)
    assert refused.value.status_code == 403
    assert refused.value.body["code"] == "tenant_suspended"

    page.goto("/admin/tenants/apikey/")
    page.locator("#result_list").wait_for()
    screenshot(page, "admin-keys")

    # Nodes: load a model through n1's worker, watch it become ready, then evict it.
    page.goto("/admin/models_mgmt/node/")
    page.get_by_role("link", name="n1").click()
    page.get_by_label("Model to load").select_option(label="smol-node (600000000 bytes)")
    page.get_by_role("button", name="Queue load").click()
    page.get_by_text("Load of smol-node queued on n1.").wait_for()
    page.locator('#placement-smol-node[data-state="ready"]').wait_for()  # htmx refreshed it
    screenshot(page, "admin-node")
    page.get_by_role("button", name="Evict smol-node").click()
    page.get_by_text("Evict of smol-node queued on n1.").wait_for()
    page.get_by_text("No models on this node.").wait_for()  # the worker unloaded it
    assert not Placement.objects.filter(model__model_id="smol-node").exists()
    page.goto("/admin/models_mgmt/node/")
    screenshot(page, "admin-nodes")

    # The usage dashboard, with the refusal the gateway just counted.
    page.goto("/admin/billing/dailyusage/")
    page.locator("#usage-by-tenant").wait_for()
    assert page.locator("#refusals", has_text="tenant_suspended").is_visible()
    screenshot(page, "admin-usage-dashboard")

    # Invoices: the list with downloads, the month's closing page, one invoice's page.
    page.goto("/admin/billing/invoice/")
    screenshot(page, "admin-invoices")
    with page.expect_download() as download:
        page.locator("#result_list").get_by_role("link", name="PDF").first.click()
    assert download.value.suggested_filename.endswith(".pdf")
    page.goto("/admin/billing/invoice/close/?period=2026-10")
    screenshot(page, "admin-invoices-close")

    # The admin's dark theme is respected.
    page.emulate_media(color_scheme="dark")
    page.goto("/admin/billing/dailyusage/")
    page.locator("#usage-by-model").wait_for()
    screenshot(page, "admin-usage-dashboard-dark")
