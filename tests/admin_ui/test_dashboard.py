"""The usage dashboard: tokens per day by tenant and by model, top tenants, from the daily
rollups; the gateway's refusals by reason, counted durably (Redis) where they are raised."""

import json
import re
import time
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from tenants.refusals import refusals_per_day
from tests.billing.factories import event, store, stream_aged
from tests.gateway_server import make_customer


def _spec(page: str, chart_id: str) -> dict:
    return json.loads(re.search(rf'id="{chart_id}-spec"[^>]*>(.*?)</script>', page, re.S)[1])


def test_dashboard_charts_tokens_by_tenant_and_model_and_ranks_tenants(
    admin_client, acme, globex, llama_price
):
    now = datetime.now(tz=UTC)
    store(event(acme, at=now, model="llama"), event(acme, at=now - timedelta(days=2)))
    store(event(globex, at=now, model="mistral", prompt=10_000))
    store(event(globex, at=now - timedelta(days=40), prompt=99_999))  # outside 30 days

    page = admin_client.get("/admin/billing/dailyusage/").content.decode()
    week = admin_client.get("/admin/billing/dailyusage/?days=7").content.decode()

    by_tenant = _spec(page, "usage-by-tenant")
    assert len(by_tenant["labels"]) == 30
    totals = {d["label"]: sum(d["data"]) for d in by_tenant["datasets"]}
    assert totals == {"acme": 3000, "globex": 10_500}
    by_model = _spec(page, "usage-by-model")
    assert {d["label"]: sum(d["data"]) for d in by_model["datasets"]} == {
        "llama": 3000,
        "mistral": 10_500,
    }
    top = re.search(r'<table class="admin-table" id="top-tenants">(.*?)</table>', page, re.S)[1]
    assert top.index("globex") < top.index("acme")
    assert len(_spec(week, "usage-by-tenant")["labels"]) == 7
    assert "No request was refused in this period." in page


def test_dashboard_is_cheap(admin_client, llama_price, django_assert_max_num_queries):
    from tenants import services

    for n in range(20):
        store(event(services.tenant_register(slug=f"t{n}"), at=datetime.now(tz=UTC)))

    with django_assert_max_num_queries(7):
        response = admin_client.get("/admin/billing/dailyusage/")

    assert response.status_code == 200


def _wait_for_refusals(expected: dict[str, int]) -> dict[str, int]:
    today = datetime.now(tz=UTC).date()
    deadline = time.monotonic() + 5
    while True:
        counts = {reason: n for _day, reason, n in refusals_per_day(today, today)}
        if counts == expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_refusals_are_counted_by_reason_where_the_gateway_raises_them(
    gateway, catalog, admin_client, settings
):
    assert settings.REDIS_URL  # the durable count: the gateway's processes write to Redis
    customer = make_customer(gateway, max_tokens_per_minute=50)
    hi = [{"role": "user", "content": "hi"}]
    customer.client().chat.completions.create(model="fake", messages=hi, max_tokens=5)

    assert _wait_for_refusals({}) == {}  # an admitted request counts nothing

    with pytest.raises(openai.RateLimitError):  # reserves more than the tenant's minute
        customer.client().chat.completions.create(model="fake", messages=hi, max_tokens=500)
    for _ in range(2):
        unknown = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": "Bearer sk-nope"})
        assert unknown.status_code == 401

    counts = _wait_for_refusals({"too_large": 1, "invalid_api_key": 2})

    assert counts == {"too_large": 1, "invalid_api_key": 2}
    page = admin_client.get("/admin/billing/dailyusage/").content.decode()
    refusals = re.search(r'<table class="admin-table" id="refusals">(.*?)</table>', page, re.S)[1]
    assert re.search(r"invalid_api_key</code></th><td class=\"num\">2<", refusals)
    assert re.search(r"too_large</code></th><td class=\"num\">1<", refusals)


def test_dashboard_shows_how_far_the_ledger_is_behind(admin_client, acme, redis_url, settings):
    settings.LEDGER_LAG_ALERT_SECONDS = 60
    caught_up = admin_client.get("/admin/billing/dailyusage/").content.decode()
    stream_aged(acme, 95)

    behind = admin_client.get("/admin/billing/dailyusage/").content.decode()

    panel = re.search(
        r'<section class="admin-panel[^"]*" [^>]*id="ledger-lag">(.*?)</section>', behind, re.S
    )
    assert "0 usage events waiting to be stored" in caught_up
    assert "Behind:" not in caught_up
    assert "admin-panel-alert" in panel[0]
    assert "Behind:" in panel[1]
    assert "1 usage event waiting to be stored; the oldest is 95 s old" in panel[1]
    assert "(alert past 60 s)" in panel[1]
