"""Tenants in the admin: this month's usage and budget use on the list (from the daily rollups,
in a fixed number of queries), quotas validated as everywhere, a usage chart, suspend and
resume through the services."""

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from saas_platform.periods import month_start
from tenants import services
from tenants.errors import TenantSuspended
from tenants.models import Tenant
from tests.billing.factories import event, store
from tests.conftest import tenant_admin_form


def _now():
    return datetime.now(tz=UTC)


def test_the_list_shows_status_quota_month_usage_and_budget_use(
    admin_client, acme, globex, llama_price
):
    services.tenant_update(tenant=acme, monthly_budget=Decimal("100.00"))
    store(event(acme, at=_now()))  # 1,500 tokens, 42.00
    first = month_start()
    last_month = datetime(first.year, first.month, 1, tzinfo=UTC) - timedelta(hours=1)
    store(event(acme, at=last_month, prompt=9_000))  # an earlier month's: not counted
    services.tenant_suspend(tenant=globex)

    page = admin_client.get("/admin/tenants/tenant/").content.decode()

    acme_row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*>acme<(?:(?!</tr>).)*</tr>", page, re.S)[0]
    assert "1,500" in acme_row
    assert "42.00" in acme_row
    assert "42% of 100.00" in acme_row
    assert '4 <abbr title="concurrent requests">conc.</abbr> · 100k' in acme_row
    assert "admin-badge-active" in acme_row
    globex_row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*>globex<(?:(?!</tr>).)*</tr>", page, re.S)[0]
    assert "admin-badge-suspended" in globex_row
    assert "no budget" in globex_row
    assert ">0<" in globex_row  # no tokens this month


def test_the_list_costs_the_same_queries_for_many_tenants(
    admin_client, llama_price, django_assert_max_num_queries
):
    for n in range(30):
        tenant = services.tenant_register(slug=f"t{n}", monthly_budget=Decimal(50))
        store(event(tenant, at=_now()), event(tenant, at=_now(), model="other"))

    # session, user, count, the page's rows with their usage (one query), and a few fixed ones
    with django_assert_max_num_queries(8):
        response = admin_client.get("/admin/tenants/tenant/")

    assert response.status_code == 200
    assert response.content.decode().count("% of 50.00") == 30


def test_the_change_page_has_a_usage_chart_by_model_and_no_key_secret(
    admin_client, acme, acme_key, llama_price
):
    store(event(acme, at=_now(), model="llama"), event(acme, at=_now(), model="mistral"))

    page = admin_client.get(f"/admin/tenants/tenant/{acme.pk}/change/").content.decode()

    spec = json.loads(re.search(r'id="tenant-usage-chart-spec"[^>]*>(.*?)</script>', page, re.S)[1])
    assert {d["label"] for d in spec["datasets"]} == {"llama", "mistral"}
    assert len(spec["labels"]) == 30
    assert spec["datasets"][0]["data"][-1] == 1500  # today, the last bar
    assert acme_key.api_key.display_prefix in page  # the keys inline
    assert acme_key.plaintext not in page
    assert acme_key.api_key.digest not in page


def test_quotas_are_validated_as_everywhere_and_nothing_is_saved(admin_client, acme):
    form = tenant_admin_form(slug="acme", name="Acme Corp", max_concurrent_requests="0")

    response = admin_client.post(f"/admin/tenants/tenant/{acme.pk}/change/", form)

    assert response.status_code == 200
    assert "Max concurrent requests must be at least 1." in response.content.decode()
    acme.refresh_from_db()
    assert acme.max_concurrent_requests == 4


def test_the_suspend_button_refuses_the_tenants_keys_and_resume_admits_them(
    admin_client, acme, acme_key, django_capture_on_commit_callbacks
):
    assert services.tenant_for_key(acme_key.plaintext).tenant == acme  # cached as active

    with django_capture_on_commit_callbacks(execute=True):
        suspended = admin_client.post(
            f"/admin/tenants/tenant/{acme.pk}/status/", {"status": "suspended"}, follow=True
        )

    assert "cme is suspended: its keys are refused" in suspended.content.decode()
    assert "Resume tenant" in suspended.content.decode()
    assert Tenant.objects.get(pk=acme.pk).status == Tenant.Status.SUSPENDED
    with pytest.raises(TenantSuspended):  # the cached lookup was forgotten
        services.tenant_for_key(acme_key.plaintext)

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(f"/admin/tenants/tenant/{acme.pk}/status/", {"status": "active"})

    assert services.tenant_for_key(acme_key.plaintext).tenant.is_active


def test_the_status_button_only_takes_posts(admin_client, acme):
    response = admin_client.get(f"/admin/tenants/tenant/{acme.pk}/status/")

    assert response.status_code == 405
    acme.refresh_from_db()
    assert acme.is_active


def test_the_admin_is_for_staff_only(client, acme, alice):
    client.force_login(alice)  # a tenant's owner, not staff

    response = client.post(f"/admin/tenants/tenant/{acme.pk}/status/", {"status": "suspended"})

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    acme.refresh_from_db()
    assert acme.is_active
