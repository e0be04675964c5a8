"""A tenant's monthly budget: once this month's spend reaches it, requests are refused with
429 insufficient_quota until next month or a raise."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import openai
import pytest

from billing import spend
from billing.pricing import price_set
from gateway.admission import Limits, LocalAdmission, RedisAdmission
from saas_platform import periods
from tenants import services
from tests.billing.factories import event, store
from tests.gateway_server import make_customer
from tests.redis_cluster import url_of

HI = [{"role": "user", "content": "hi"}]


def test_a_spent_budget_refuses_with_insufficient_quota_until_it_is_raised(gateway, catalog):
    price_set(model_id="fake", input_per_million=Decimal(100_000), output_per_million=Decimal(0),
              effective_from=datetime.now(tz=UTC) - timedelta(days=1))  # fmt: skip
    customer = make_customer(gateway, monthly_budget=Decimal("5.00"))
    client = customer.client()
    client.chat.completions.create(model="fake", messages=HI)  # under budget: served

    store(event(customer.tenant, model="fake", prompt=50, completion=0))  # 5.00 spent

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="fake", messages=HI)
    assert caught.value.code == "insufficient_quota"
    assert caught.value.body["type"] == "insufficient_quota"
    assert "monthly budget of 5.00" in caught.value.message
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 0 < retry_after <= 31 * 24 * 3600

    services.tenant_update(tenant=customer.tenant, monthly_budget=Decimal("50.00"))
    assert client.chat.completions.create(model="fake", messages=HI).choices


def test_no_budget_means_no_budget_check(gateway, catalog):
    customer = make_customer(gateway)
    spend.spend_set(customer.tenant.pk, periods.month_key(), 10**15)

    response = httpx.post(f"{gateway.url}/v1/chat/completions",
                          json={"model": "fake", "messages": HI},
                          headers={"Authorization": f"Bearer {customer.key}"})  # fmt: skip

    assert response.status_code == 200


@pytest.mark.parametrize("backend", ["redis", "cluster", "local"])
def test_admission_backends_check_the_budget(request, settings, backend):
    limits = Limits(max_concurrent=5, tokens_per_minute=1000, budget_micros=2_000_000)
    if backend == "local":
        settings.REDIS_URL = ""
    elif backend == "cluster":  # the spend key shares the admission keys' slot
        settings.REDIS_URL = url_of(request, "cluster")
    tenant_id = 424242

    async def admit(lease_id):
        chosen = LocalAdmission() if backend == "local" else RedisAdmission(settings.REDIS_URL)
        return await chosen.admit(tenant_id, lease_id, limits, 10)

    spend.spend_set(tenant_id, periods.month_key(), 1_999_999)
    under = asyncio.run(admit("a"))
    spend.spend_add(tenant_id, periods.month_key(), 1)
    over = asyncio.run(admit("b"))

    assert under.admitted
    assert (over.admitted, over.reason) == (False, "budget")
