"""A tenant's monthly budget, held at admission: each request holds its largest possible cost
(its prompt and max_tokens at the model's price) and settles its real cost when it ends, so no
burst spends past the budget, and the budget is usable to its end. Refusals are 429
insufficient_quota, with no usage event."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import openai
import pytest

from billing import money, spend
from billing.credits import credits_grant
from billing.pricing import price_set
from tenants import services
from tests.billing.factories import event, store
from tests.gateway_server import fake_model, gateway_env, make_customer
from tests.security.conftest import own_gateway
from tests.servers import ROOT, free_port, gateway_command, running

HI = [{"role": "user", "content": "hello"}]
YESTERDAY = datetime.now(tz=UTC) - timedelta(days=1)


def _priced(fake_upstream_url: str, model_id: str, options: str) -> str:
    fake_model(fake_upstream_url, model_id, options)
    price_set(model_id=model_id, input_per_million=Decimal(1500),
              output_per_million=Decimal(6000), effective_from=YESTERDAY)  # fmt: skip
    return model_id


# The fake engine counts 10 prompt tokens; with max_tokens 5 a request costs
# 10 x 0.0015 + 5 x 0.006 = 0.045 and holds ("hello": 5 bytes, plus 8 tokens of template for its
# message and 8 for the reply's header) 21 x 0.0015 + 5 x 0.006 = 0.0615.
COST, HOLD = Decimal("0.045"), Decimal("0.0615")


async def _burst(base_url: str, key: str, model: str, count: int) -> list:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)

    async def one():
        try:
            stream = await client.chat.completions.create(
                model=model, messages=HI, max_tokens=5, stream=True
            )
            return [chunk async for chunk in stream]
        except openai.RateLimitError as error:
            return error

    try:
        return await asyncio.gather(*[one() for _ in range(count)])
    finally:
        await client.close()


class Sampler(threading.Thread):
    """Reads what is committed (spent or credits used, plus held) where admission keeps it, as
    often as it can, while a burst runs."""

    def __init__(self, tenant_id: int, committed_key: str):
        super().__init__(daemon=True)
        self.keys = (committed_key, f"adm:{{{tenant_id}}}:held")
        self.highest = 0
        self.samples = 0
        self.done = threading.Event()

    def run(self):
        client = spend._redis()
        while not self.done.is_set():
            committed, held = (int(value or 0) for value in client.mget(*self.keys))
            self.highest = max(self.highest, committed + held)
            self.samples += 1


@pytest.mark.parametrize("limit", ["budget", "prepaid"])
def test_a_burst_never_spends_past_the_budget_or_the_credits_across_gateway_processes(
    gateway, fake_upstream_url, transactional_db, limit
):
    model = _priced(fake_upstream_url, "metered", "chunks=5&delay=0.05")
    if limit == "budget":
        customer = make_customer(gateway, monthly_budget=Decimal("0.25"),
                                 max_concurrent_requests=50)  # fmt: skip
        committed = spend.spend_key(customer.tenant.pk, spend.month_key())
    else:
        customer = make_customer(gateway, prepaid=True, max_concurrent_requests=50)
        credits_grant(tenant=customer.tenant, amount=Decimal("0.25"), reason="trial")
        committed = spend.credit_used_key(customer.tenant.pk)
    sampler = Sampler(customer.tenant.pk, committed)
    sampler.start()

    first = asyncio.run(_burst(customer.base_url, customer.key, model, 12))
    last = asyncio.run(_burst(customer.base_url, customer.key, model, 2))
    sampler.done.set()
    sampler.join()

    served = [r for r in first if not isinstance(r, Exception)]
    refused = [r for r in first + last if isinstance(r, Exception)]
    assert len(served) == 4  # 4 holds of 0.0615 = 0.246 of 0.25; a fifth would pass it
    assert {error.code for error in refused} == {"insufficient_quota"}
    assert "cover this request's largest possible cost, 0.0615 USD" in refused[0].message
    assert "smaller max_tokens may fit" in refused[0].message
    # Settled at 0.045 each, 0.18 is spent: 0.07 left still covers one more hold.
    assert sorted(isinstance(r, Exception) for r in last) == [False, True]
    assert spend.counter_get(committed) == money.to_picos(5 * COST)
    assert sampler.samples > 10
    assert sampler.highest <= money.to_picos(Decimal("0.25"))
    events = [e for e in gateway.events() if e["tenant_id"] == str(customer.tenant.pk)]
    assert len(events) == 5  # a refused request leaves no usage event


def test_a_spent_budget_refuses_until_it_is_raised(gateway, catalog, fake_upstream_url):
    model = _priced(fake_upstream_url, "metered-2", "chunks=5")
    customer = make_customer(gateway, monthly_budget=Decimal("5.00"))
    client = customer.client()
    client.chat.completions.create(model=model, messages=HI, max_tokens=5)  # served
    # Usage the gateway never settled (another path, or a Redis that lost its data) reaches
    # the running spend through the reconcile from the ledger.
    store(event(customer.tenant, model=model, prompt=3300, completion=0))  # 4.95 more
    spend.spend_reconcile()

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=model, messages=HI, max_tokens=5)
    assert caught.value.code == "insufficient_quota"
    assert caught.value.body["type"] == "insufficient_quota"
    assert "monthly budget of 5.00" in caught.value.message
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 0 < retry_after <= 31 * 24 * 3600

    services.tenant_update(tenant=customer.tenant, monthly_budget=Decimal("50.00"))
    assert client.chat.completions.create(model=model, messages=HI, max_tokens=5).choices


def test_without_max_tokens_a_budgeted_request_is_bounded_by_the_default(
    gateway, fake_upstream_url, transactional_db
):
    """The hold must be a true maximum, so the engine is asked for no more than was held."""
    model = _priced(fake_upstream_url, "metered-3", "chunks=2000")
    budgeted = make_customer(gateway, slug="capped", monthly_budget=Decimal("100"))
    free = make_customer(gateway, slug="uncapped")
    price_set(model_id=model, input_per_million=Decimal(0), output_per_million=Decimal(0),
              tenant=free.tenant, effective_from=YESTERDAY)  # fmt: skip

    capped = budgeted.client().chat.completions.create(model=model, messages=HI)
    uncapped = free.client().chat.completions.create(model=model, messages=HI)

    assert capped.usage.completion_tokens == 1024  # DEFAULT_MAX_TOKENS_RESERVATION
    assert uncapped.usage.completion_tokens == 2000


def test_no_budget_means_no_budget_check(gateway, catalog):
    customer = make_customer(gateway)
    spend.counter_set(spend.spend_key(customer.tenant.pk, spend.month_key()), 10**24)

    response = httpx.post(f"{gateway.url}/v1/chat/completions",
                          json={"model": "fake", "messages": HI},
                          headers={"Authorization": f"Bearer {customer.key}"})  # fmt: skip

    assert response.status_code == 200


def test_a_killed_gateways_holds_expire_with_their_leases_and_charge_nothing(
    fake_upstream_url, transactional_db, tmp_path
):
    model = _priced(fake_upstream_url, "metered-4", "hang=1")
    tenant = services.tenant_register(slug="killed", monthly_budget=Decimal("0.10"))
    key = services.apikey_issue(tenant=tenant, name="t").plaintext
    port = free_port()
    env = gateway_env(ADMISSION_LEASE_SECONDS="1")
    server = subprocess.Popen(gateway_command(port, workers=1), cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        _wait_up(port)
        body = {"model": model, "messages": HI, "max_tokens": 5}
        headers = {"Authorization": f"Bearer {key}"}
        hanging = threading.Thread(target=_post_quietly, daemon=True,
                                   args=(f"http://127.0.0.1:{port}", body, headers))  # fmt: skip
        hanging.start()
        held_key = f"adm:{{{tenant.pk}}}:held"
        _wait_for(lambda: int(spend._redis().get(held_key) or 0) > 0)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)

    with own_gateway(tmp_path) as fresh:
        answering = _priced(fake_upstream_url, "metered-5", "")
        ok = httpx.post(f"{fresh.url}/v1/chat/completions", headers=headers, timeout=30,
                        json={**body, "model": answering})  # fmt: skip
        # The dead hold went with its lease (else 0.0615 + 0.0615 would not fit 0.10), and the
        # new request's with its settlement, just after its answer.
        _wait_for(lambda: int(spend._redis().get(held_key) or 0) == 0)

    assert ok.status_code == 200, ok.text
    assert spend.spend_get(tenant.pk, spend.month_key()) == money.to_picos(
        10 * Decimal("0.0015") + 5 * Decimal("0.006")
    )  # only the request that finished


def _post_quietly(url, body, headers):
    with contextlib.suppress(httpx.HTTPError):  # its gateway is killed under it
        httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def _wait_up(port: int) -> None:
    _wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=60)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_embedded_default_holds_the_budget_and_the_credits_too(tmp_path, fake_upstream_url):
    """SQLite and no Redis, one server process, set up as a new user does, with the CLI (so
    the credits are granted by another process than the gateway's): a budgeted tenant and a
    prepaid one, each bursting in turn."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", CATALOG_CACHE_SECONDS="0",
               USAGE_NDJSON_PATH=str(tmp_path / "usage.ndjson"))  # fmt: skip

    def manage(*args) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    manage("migrate", "--verbosity", "0")
    manage("tenant", "create", "budgeted", "--budget", "0.25", "--max-concurrent", "50")
    manage("tenant", "create", "prepaid", "--prepaid", "--max-concurrent", "50")
    manage("credits", "grant", "prepaid", "--amount", "0.25", "--reason", "trial")
    manage("models", "register", "metered", "--engine", "openai", "--base-url",
           fake_upstream_url, "--upstream-model", "fake?chunks=5&delay=0.05")  # fmt: skip
    manage("price", "set", "metered", "--input-per-million", "1500", "--output-per-million", "6000",
           "--from", YESTERDAY.isoformat())  # fmt: skip
    keys = [manage("apikey", "create", slug).strip().splitlines()[-1]
            for slug in ("budgeted", "prepaid")]  # fmt: skip
    port = free_port()
    served = []
    with running(gateway_command(port, workers=1), env=env,
                 ready_url=f"http://127.0.0.1:{port}/healthz"):  # fmt: skip
        for key in keys:
            first = asyncio.run(_burst(f"http://127.0.0.1:{port}/v1", key, "metered", 12))
            last = asyncio.run(_burst(f"http://127.0.0.1:{port}/v1", key, "metered", 2))
            served.append([sum(not isinstance(r, Exception) for r in b) for b in (first, last)])

    assert served == [[4, 1], [4, 1]]
    lines = (tmp_path / "usage.ndjson").read_text().splitlines()
    assert len(lines) == 10
