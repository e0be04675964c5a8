"""An API key's own limits, through the gateway: each narrows its tenant's, a request must fit
both, and a refusal says whose limit it hit."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import openai
import pytest

from billing.pricing import price_set
from tenants import services
from tenants.quotas import KeyLimits
from tests.gateway_server import fake_model

HI = [{"role": "user", "content": "hello"}]


@pytest.fixture
def models(fake_upstream_url, transactional_db):
    slow = fake_model(fake_upstream_url, "slow", "chunks=3&delay=0.4")
    quick = fake_model(fake_upstream_url, "quick", "chunks=2")
    price_set(
        model_id=quick,
        input_per_million=Decimal(1000),
        output_per_million=Decimal(1000),
        effective_from=datetime.now(tz=UTC) - timedelta(days=1),
    )
    return slow, quick


def _client(gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


async def _together(client, model: str, count: int, **options) -> list:
    async def one():
        try:
            return await client.chat.completions.create(model=model, messages=HI, **options)
        except openai.APIStatusError as error:
            return error

    return await asyncio.gather(*[one() for _ in range(count)])


def _key(tenant, **limits) -> str:
    return services.apikey_issue(tenant=tenant, name="k", limits=KeyLimits(**limits)).plaintext


# (tenant quotas, the key's limits, how many requests at once, options, model,
#  expected: requests served, refusal status, refusal code, words of the refusal)
CASES = {
    "key concurrency": ({"max_concurrent_requests": 10}, {"max_concurrent_requests": 1}, 3, {},
                        "slow", (1, 429, "rate_limit_exceeded", "this API key (limit 1)")),
    "tenant concurrency": ({"max_concurrent_requests": 2}, {"max_requests_per_minute": 50}, 3,
                           {}, "slow", (2, 429, "rate_limit_exceeded", "this tenant (limit 2)")),
    "key requests per minute": ({"max_requests_per_minute": 50}, {"max_requests_per_minute": 2},
                                3, {}, "quick", (2, 429, "rate_limit_exceeded",
                                                 "per minute for this API key (limit 2)")),
    "key tokens per minute": ({}, {"max_tokens_per_minute": 500}, 1, {"max_tokens": 1000},
                              "quick", (0, 429, "rate_limit_exceeded",
                                        "the API key's limit is 500 tokens per minute")),
    "key budget": ({"monthly_budget": Decimal(10)}, {"monthly_budget": Decimal("0.01")}, 1,
                   {"max_tokens": 100}, "quick",
                   (0, 429, "insufficient_quota", "The API key's monthly budget of 0.01")),
    "tenant budget": ({"monthly_budget": Decimal("0.01")}, {"max_concurrent_requests": 5}, 1,
                      {"max_tokens": 100}, "quick",
                      (0, 429, "insufficient_quota", "The tenant's monthly budget of 0.01")),
    "key allow list": ({}, {"model_allow_list": ["slow"]}, 1, {}, "quick",
                       (0, 404, "model_not_found", "quick")),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_request_must_fit_the_keys_limits_and_its_tenants(gateway, models, case):
    quotas, limits, count, options, model, expected = CASES[case]
    served, status, code, words = expected
    tenant = services.tenant_register(slug="acme", **quotas)
    key = _key(tenant, **limits)

    async def go():
        client = _client(gateway, key)
        try:
            return await _together(client, model, count, **options)
        finally:
            await client.close()

    answers = asyncio.run(go())

    refused = [a for a in answers if isinstance(a, openai.APIStatusError)]
    assert len(answers) - len(refused) == served
    assert refused, "the limit refused nothing"
    assert {(e.status_code, e.code) for e in refused} == {(status, code)}
    assert words in refused[0].message


def test_another_key_of_the_tenant_is_not_held_to_a_keys_limits(gateway, models):
    tenant = services.tenant_register(slug="acme", max_concurrent_requests=10)
    narrow, wide = _key(tenant, max_concurrent_requests=1), _key(tenant)

    async def go():
        clients = _client(gateway, narrow), _client(gateway, wide)
        try:
            return await asyncio.gather(
                _together(clients[0], "slow", 2), _together(clients[1], "slow", 4)
            )
        finally:
            for client in clients:
                await client.close()

    by_narrow, by_wide = asyncio.run(go())

    assert sum(isinstance(a, openai.APIStatusError) for a in by_narrow) == 1
    assert not any(isinstance(a, openai.APIStatusError) for a in by_wide)


def test_the_rate_limit_headers_describe_the_tighter_limit(gateway, models):
    tenant = services.tenant_register(
        slug="acme", max_tokens_per_minute=100_000, max_requests_per_minute=100
    )
    key = _key(tenant, max_tokens_per_minute=5_000, max_requests_per_minute=50)
    loose = _key(tenant, max_requests_per_minute=7)

    tight = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "quick", "messages": HI, "max_tokens": 10},
        headers={"Authorization": f"Bearer {key}"},
    )
    other = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "quick", "messages": HI, "max_tokens": 10},
        headers={"Authorization": f"Bearer {loose}"},
    )

    assert tight.status_code == other.status_code == 200
    assert tight.headers["x-ratelimit-limit-tokens"] == "5000"
    assert int(tight.headers["x-ratelimit-remaining-tokens"]) < 5000
    assert other.headers["x-ratelimit-limit-tokens"] == "100000"
    assert other.headers["x-ratelimit-limit-requests"] == "7"
    assert other.headers["x-ratelimit-remaining-requests"] == "6"


def test_models_lists_only_what_the_key_may_use(gateway, models):
    tenant = services.tenant_register(slug="acme")
    key = _key(tenant, model_allow_list=["quick"])

    listed = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"})

    assert [m["id"] for m in listed.json()["data"]] == ["quick"]
