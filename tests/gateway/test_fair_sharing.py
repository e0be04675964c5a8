"""Fair sharing of a saturated model's engines, end to end: two gateway processes on one Redis
in front of a fake engine with a hard capacity (a semaphore: more requests would wait inside it,
in arrival order), and the queue's bounds."""

import asyncio
import os
import re
import signal
import subprocess
import time
import zlib

import httpx
import pytest
import redis
from django.conf import settings

from gateway.fair_queue_backends import redis_depth
from models_mgmt.services import model_register
from tests.gateway_server import LEASE_SECONDS, Gateway, gateway_env, make_customer
from tests.servers import free_port, gateway_command, running

SERVICE_SECONDS = 0.3  # chunks=5, 60 ms apart
QUEUE_MAX_WAIT = 6  # more than the 40 noisy requests take to drain


@pytest.fixture(scope="module")
def gateways(django_db_setup, tmp_path_factory):
    """Two gateway processes sharing Redis (and one usage file), with a short maximum wait."""
    folder = tmp_path_factory.mktemp("fair")
    usage = folder / "usage.ndjson"
    env = gateway_env(USAGE_NDJSON_PATH=str(usage), QUEUE_MAX_WAIT_SECONDS=str(QUEUE_MAX_WAIT))
    ports = [free_port(), free_port()]
    with (
        running(gateway_command(ports[0], workers=1), env=env, log=folder / "gw0.log",
                ready_url=f"http://127.0.0.1:{ports[0]}/healthz"),
        running(gateway_command(ports[1], workers=1), env=env, log=folder / "gw1.log",
                ready_url=f"http://127.0.0.1:{ports[1]}/healthz"),
    ):  # fmt: skip
        yield [Gateway(url=f"http://127.0.0.1:{port}", usage_path=usage,
                       log_path=folder / f"gw{i}.log") for i, port in enumerate(ports)]  # fmt: skip


def register(fake_upstream_url: str, model_id: str, capacity: int, options: str) -> str:
    # The fake's semaphore is per model name (its options are numbers): m= keeps each its own.
    model_register(model_id=model_id, engine="openai", base_url=fake_upstream_url,
                   upstream_model=f"fake?capacity={capacity}&{options}&m={zlib.crc32(model_id.encode())}",
                   max_concurrent_per_replica=capacity)  # fmt: skip
    return model_id


async def stream_start(client: httpx.AsyncClient, url: str, key: str, model: str,
                       started: float) -> tuple[float, float, str]:  # fmt: skip
    """One streamed chat request, read to its end: (seconds to its first chunk, to its end,
    its request id)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                             headers=headers) as response:  # fmt: skip
        assert response.status_code == 200, await response.aread()
        first = None
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.monotonic() - started
        return first, time.monotonic() - started, response.headers["x-request-id"]


def metric(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}{{{wanted}}} (\S+)$", text, re.M)]
    return sum(values)


def test_a_quiet_tenant_is_served_within_a_request_time_beside_a_noisy_one(
    gateways, transactional_db, fake_upstream_url
):
    model = register(fake_upstream_url, "fair-noisy", 4, "chunks=5&delay=0.06")
    noisy = make_customer(gateways[0], slug="noisy", max_concurrent_requests=50)
    quiet = make_customer(gateways[0], slug="quiet", max_concurrent_requests=5)

    async def main():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as c:
            started = time.monotonic()
            loud = [asyncio.create_task(stream_start(c, gateways[i % 2].url, noisy.key, model,
                                                     started)) for i in range(40)]  # fmt: skip
            await asyncio.sleep(1.0)  # the 40 are admitted: 4 served, the rest waiting
            scrape = (await c.get(f"{gateways[1].url}/metrics")).text
            quiet_started = time.monotonic()
            calm = [stream_start(c, gateways[i % 2].url, quiet.key, model, quiet_started)
                    for i in range(2)]  # fmt: skip
            calm_results = await asyncio.gather(*calm)
            loud_results = await asyncio.gather(*loud)
            after = [(await c.get(f"{gateway.url}/metrics")).text for gateway in gateways]
            return loud_results, calm_results, scrape, after

    loud, calm, scrape, after = asyncio.run(main())

    quiet_delays = [first for first, _end, _id in calm]
    assert max(quiet_delays) < 2 * SERVICE_SECONDS  # not behind the 40: about one request's time
    assert max(first for first, _end, _id in loud) > 6 * SERVICE_SECONDS  # the noisy waited
    assert metric(scrape, "gateway_queue_depth", model=model, tenant="noisy") >= 20
    assert metric(scrape, "gateway_queue_depth", model=model, tenant="quiet") == 0
    waits = {tenant: sum(metric(text, "gateway_queue_wait_seconds_count", model=model,
                                tenant=tenant) for text in after)
             for tenant in ("noisy", "quiet")}  # fmt: skip
    assert waits == {"noisy": 40, "quiet": 2}  # every request's wait, on the gateway it waited in
    events = {e["request_id"]: e for e in gateways[0].events_for([r[2] for r in loud + calm])}
    assert len(events) == 42
    assert max(events[r[2]]["queue_ms"] for r in calm) < 2000 * SERVICE_SECONDS
    assert max(events[r[2]]["queue_ms"] for r in loud) > 4000 * SERVICE_SECONDS
    assert all(e["status"] == 200 for e in events.values())


def test_weighted_tenants_that_both_saturate_split_the_engine_three_to_one(
    gateways, transactional_db, fake_upstream_url
):
    model = register(fake_upstream_url, "fair-weights", 4, "chunks=4&delay=0.05")
    heavy = make_customer(gateways[0], slug="heavy", max_concurrent_requests=20, queue_weight=3)
    light = make_customer(gateways[0], slug="light", max_concurrent_requests=20, queue_weight=1)
    run_for, window = 6.0, (1.5, 5.0)  # counted in the middle, while both saturate

    async def main():
        starts: dict[str, list[float]] = {"heavy": [], "light": []}
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as c:
            started = time.monotonic()

            async def loop(name, key, gateway):
                while time.monotonic() - started < run_for:
                    first, _end, _id = await stream_start(c, gateway.url, key, model, started)
                    starts[name].append(first)

            await asyncio.gather(
                *(loop("heavy", heavy.key, gateways[i % 2]) for i in range(12)),
                *(loop("light", light.key, gateways[i % 2]) for i in range(12)),
            )
        return starts

    starts = asyncio.run(main())

    served = {
        name: sum(window[0] <= t < window[1] for t in times) for name, times in starts.items()
    }
    assert served["light"] >= 10
    assert 2.7 <= served["heavy"] / served["light"] <= 3.3, served


@pytest.fixture
def held_model(gateways, transactional_db, fake_upstream_url):
    """A model with one slot, and a tenant holding it with a long stream."""
    model = register(fake_upstream_url, "fair-one", 1, "chunks=400&delay=0.05")
    customer = make_customer(gateways[0], slug="bounded", max_concurrent_requests=10,
                             max_queued_requests=2)  # fmt: skip
    return model, customer


def chat(client: httpx.Client, gateway, key: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    return client.post(f"{gateway.url}/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip


def leases(tenant) -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    return client.zcount(f"adm:{{{tenant.pk}}}:leases", int(time.time() * 1000), "+inf")


def slots(model_id: str) -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    return client.zcount(f"fq:{{{model_id}}}:slots", int(time.time() * 1000), "+inf")


def test_queue_bounds_wait_time_and_tenant_depth(held_model, gateways):
    model, customer = held_model

    async def main():
        async with httpx.AsyncClient(timeout=60) as c:
            holder = asyncio.create_task(
                stream_start(c, gateways[0].url, customer.key, model, time.monotonic())
            )
            await asyncio.sleep(0.5)
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {customer.key}"}
            url = "/v1/chat/completions"
            waiting = [asyncio.create_task(c.post(gateways[i].url + url, json=body,
                                                  headers=headers)) for i in range(2)]  # fmt: skip
            await asyncio.sleep(0.5)
            started = time.monotonic()
            refused = await c.post(gateways[1].url + url, json=body, headers=headers)
            refused_after = time.monotonic() - started
            timed_out = await asyncio.gather(*waiting)
            waited = time.monotonic() - started
            holder.cancel()
            return refused, refused_after, timed_out, waited

    refused, refused_after, timed_out, waited = asyncio.run(main())

    assert refused.status_code == 429  # the tenant already had 2 waiting: at once
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused_after < 1
    for response in timed_out:
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "engine_overloaded"
        assert int(response.headers["retry-after"]) >= 1
    assert QUEUE_MAX_WAIT - 1 <= waited < QUEUE_MAX_WAIT + 2
    assert redis_depth(settings.REDIS_URL, model) == {}


def test_a_client_that_leaves_while_queued_frees_its_place_and_admission_at_once(
    held_model, gateways
):
    model, customer = held_model

    async def main():
        async with httpx.AsyncClient(timeout=60) as c:
            holder = asyncio.create_task(
                stream_start(c, gateways[0].url, customer.key, model, time.monotonic())
            )
            await asyncio.sleep(0.5)
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {customer.key}"}
            leaver = asyncio.create_task(
                c.post(f"{gateways[1].url}/v1/chat/completions", json=body, headers=headers)
            )
            await asyncio.sleep(0.5)
            queued = redis_depth(settings.REDIS_URL, model), leases(customer.tenant)
            leaver.cancel()  # closes its connection
            await asyncio.sleep(0.3)
            after = redis_depth(settings.REDIS_URL, model), leases(customer.tenant)
            holder.cancel()
            return queued, after

    queued, after = asyncio.run(main())

    assert queued == ({str(customer.tenant.pk): 1}, 2)
    assert after == ({}, 1)  # only the holder's: the leaver's place and lease are gone


def test_a_gateway_killed_with_waiters_leaves_no_entry_after_the_lease(
    held_model, gateways, tmp_path
):
    model, customer = held_model
    port = free_port()
    env = gateway_env(QUEUE_MAX_WAIT_SECONDS="60")
    doomed = subprocess.Popen(gateway_command(port, workers=1), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)

        async def main():
            async with httpx.AsyncClient(timeout=60) as c:
                holder = asyncio.create_task(
                    stream_start(c, gateways[0].url, customer.key, model, time.monotonic())
                )
                await asyncio.sleep(0.5)
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                headers = {"Authorization": f"Bearer {customer.key}"}
                waiters = [asyncio.create_task(c.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                                      json=body, headers=headers))
                           for _ in range(2)]  # fmt: skip
                await asyncio.sleep(0.7)
                queued = redis_depth(settings.REDIS_URL, model)
                os.kill(doomed.pid, signal.SIGKILL)
                doomed.wait(timeout=10)
                await asyncio.gather(*waiters, return_exceptions=True)
                await asyncio.sleep(LEASE_SECONDS + 0.5)
                after = redis_depth(settings.REDIS_URL, model), slots(model)
                holder.cancel()
                return queued, after

        queued, after = asyncio.run(main())
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()

    assert queued == {str(customer.tenant.pk): 2}
    assert after == ({}, 1)  # the waiters' places expired; only the holder's slot is left


def test_the_slot_is_given_back_when_the_client_leaves_mid_stream_and_on_an_engine_error(
    gateways, transactional_db, fake_upstream_url
):
    streamed = register(fake_upstream_url, "fair-cut", 1, "chunks=100&delay=0.05")
    failing = register(fake_upstream_url, "fair-fail", 1, "fail=500")
    customer = make_customer(gateways[0], slug="endings", max_concurrent_requests=5)
    body = {"model": streamed, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {customer.key}"}

    async def leave_mid_stream():
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{gateways[1].url}/v1/chat/completions"
            async with client.stream("POST", url, json=body, headers=headers) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        break
                return response.status_code, slots(streamed), leases(customer.tenant)

    holding = asyncio.run(leave_mid_stream())
    time.sleep(0.5)  # the stream was closed after its first chunk
    left = slots(streamed), leases(customer.tenant)
    with httpx.Client(timeout=30) as client:
        started = time.monotonic()
        errors = [chat(client, gateways[i % 2], customer.key, failing).status_code
                  for i in range(3)]  # fmt: skip
        failed_in = time.monotonic() - started

    assert holding == (200, 1, 1)
    assert left == (0, 0)
    assert errors == [502, 502, 502]  # each in turn found the one slot free
    assert failed_in < QUEUE_MAX_WAIT
    assert slots(failing) == 0
