"""Concurrency and tokens-per-minute limits across gateway processes, on the fake engine."""

import asyncio
import time

import httpx

from tests.gateway_server import LEASE_SECONDS, fake_model, make_customer

HI = [{"role": "user", "content": "hi"}]


def _headers(customer) -> dict[str, str]:
    return {"Authorization": f"Bearer {customer.key}"}


async def _stream_status(client, customer, model) -> tuple[int, dict, int]:
    """Open a stream; return its status and headers once known, and how many chunks it had."""
    body = {"model": model, "messages": HI, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers=_headers(customer)) as response:  # fmt: skip
        chunks = 0
        if response.status_code == 200:
            async for line in response.aiter_lines():
                chunks += line.startswith("data:")
        else:
            await response.aread()
        return response.status_code, dict(response.headers), chunks


def test_k_plus_5_slow_streams_admit_exactly_k_then_free_at_once(
    gateway, catalog, fake_upstream_url
):
    k = 3
    model = fake_model(fake_upstream_url, "slow", "chunks=15&delay=0.1")
    customer = make_customer(gateway, max_concurrent_requests=k)

    async def run():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            results = await asyncio.gather(
                *[_stream_status(client, customer, model) for _ in range(k + 5)]
            )
            after = await client.post("/v1/chat/completions", headers=_headers(customer),
                                      json={"model": model, "messages": HI})  # fmt: skip
            return results, after

    results, after = asyncio.run(run())

    statuses = sorted(status for status, _headers, _chunks in results)
    assert statuses == [200] * k + [429] * 5
    for status, headers, chunks in results:
        if status == 200:
            assert chunks == 15 + 2  # every content chunk, the finish chunk and [DONE]
        else:
            assert int(headers["retry-after"]) >= 1
            assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert after.status_code == 200


def test_a_client_that_disconnects_mid_stream_frees_its_slot_within_a_second_and_is_billed(
    gateway, catalog, fake_upstream_url
):
    model = fake_model(fake_upstream_url, "long", "chunks=200&delay=0.05")
    customer = make_customer(gateway, max_concurrent_requests=1)
    body = {"model": model, "messages": HI, "stream": True}

    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json=body,
                           headers=_headers(customer)) as response:  # fmt: skip
            request_id = response.headers["x-request-id"]
            received = 0
            for line in response.iter_lines():
                received += line.startswith("data:")
                if received == 5:
                    break
        # Leaving the block closed the connection mid-stream, as `curl --max-time` does.
        gone = time.monotonic()
        while True:
            retry = client.post("/v1/chat/completions", headers=_headers(customer),
                                json={"model": "fake", "messages": HI})  # fmt: skip
            if retry.status_code == 200 or time.monotonic() - gone > 3:
                break
            time.sleep(0.05)
        freed_after = time.monotonic() - gone

    assert retry.status_code == 200
    assert freed_after < 1.0
    [event] = gateway.events_for([request_id])
    assert event["status"] == 499
    assert event["completion_tokens"] >= 5
    assert event["usage_source"] == "counted"


def test_tokens_admitted_in_a_minute_never_exceed_the_limit_under_50_concurrent(
    gateway, catalog, fake_upstream_url
):
    model = fake_model(fake_upstream_url, "steady", "chunks=5&delay=0.3")
    # Each request reserves 1 (prompt "hi": 2 bytes / 3, rounded up) + 4 (one message) + 95.
    customer = make_customer(gateway, max_concurrent_requests=100, max_tokens_per_minute=2000)

    async def run():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            return await asyncio.gather(
                *[
                    client.post("/v1/chat/completions", headers=_headers(customer),
                                json={"model": model, "messages": HI, "max_tokens": 95})
                    for _ in range(50)
                ]
            )  # fmt: skip

    responses = asyncio.run(run())

    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(admitted) + len(refused) == 50
    assert len(admitted) * 100 <= 2000
    assert len(admitted) == 20  # all 50 overlap, so exactly the limit's worth gets in
    assert {r.json()["error"]["code"] for r in refused} == {"rate_limit_exceeded"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert min(int(r.headers["x-ratelimit-remaining-tokens"]) for r in admitted) == 0


def test_a_request_that_can_never_fit_says_so(gateway, catalog):
    customer = make_customer(gateway, max_tokens_per_minute=50)

    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers=_headers(customer),
                          json={"model": "fake", "messages": HI, "max_tokens": 100})  # fmt: skip

    assert response.status_code == 429
    assert "can never be admitted" in response.json()["error"]["message"]
    assert response.headers["x-ratelimit-limit-tokens"] == "50"


def test_a_long_stream_keeps_its_slot_past_the_lease_time(gateway, catalog, fake_upstream_url):
    # The gateway runs with 3-second leases: this stream lasts 5 s, renewing its lease.
    model = fake_model(fake_upstream_url, "five-seconds", "chunks=50&delay=0.1")
    customer = make_customer(gateway, max_concurrent_requests=1)
    body = {"model": model, "messages": HI, "stream": True}

    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json=body,
                           headers=_headers(customer)) as response:  # fmt: skip
            lines = response.iter_lines()
            started = time.monotonic()
            while time.monotonic() - started < LEASE_SECONDS + 1:
                next(lines)
            during = client.post("/v1/chat/completions", headers=_headers(customer),
                                 json={"model": "fake", "messages": HI})  # fmt: skip
            remaining = sum(1 for line in lines if line.startswith("data:"))
        after = client.post("/v1/chat/completions", headers=_headers(customer),
                            json={"model": "fake", "messages": HI})  # fmt: skip

    assert during.status_code == 429
    assert remaining > 0  # the stream was still running when the second request came
    assert after.status_code == 200
