"""Exactly one usage event per admitted request, none for refused ones, whatever the ending;
no event or log line carries a key."""

import asyncio

import httpx

from tests.gateway_server import fake_model, make_customer

HI = [{"role": "user", "content": "hi"}]


def test_one_event_per_admitted_request_across_errors_and_disconnects(
    gateway, catalog, fake_upstream_url
):
    customer = make_customer(gateway, max_concurrent_requests=20, max_tokens_per_minute=100_000)
    models = {
        "ok": fake_model(fake_upstream_url, "ok", "chunks=4"),
        "fail": fake_model(fake_upstream_url, "fail", "fail=500"),
        "hang": fake_model(fake_upstream_url, "hang", "hang=1"),
        "cut": fake_model(fake_upstream_url, "cut", "chunks=10&cut=3"),
        "long": fake_model(fake_upstream_url, "long", "chunks=100&delay=0.05"),
    }
    headers = {"Authorization": f"Bearer {customer.key}"}
    admitted: dict[str, int] = {}  # request id -> status expected in its event
    refused: list[str] = []

    async def call(client, model, *, stream=False, max_tokens=None):
        body = {"model": models.get(model, model), "messages": HI, "stream": stream}
        if max_tokens:
            body["max_tokens"] = max_tokens
        async with client.stream("POST", "/v1/chat/completions", json=body,
                                 headers=headers) as response:  # fmt: skip
            text = (await response.aread()).decode()
            return response.status_code, response.headers["x-request-id"], text

    async def disconnect(client):
        body = {"model": models["long"], "messages": HI, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body,
                                 headers=headers) as response:  # fmt: skip
            async for _line in response.aiter_lines():
                break
            return response.headers["x-request-id"]

    async def run():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            plan = [("ok", False)] * 3 + [("ok", True)] * 2 + [("fail", False), ("fail", True)]
            plan += [("hang", False), ("cut", True)]
            results = await asyncio.gather(*[call(client, m, stream=s) for m, s in plan])
            gone = await disconnect(client)
            too_big = await call(client, "ok", max_tokens=200_000_000)
            unknown = await call(client, "no-such-model")
            return results, gone, [too_big, unknown]

    results, gone, bad = asyncio.run(run())

    statuses = [status for status, _rid, _text in results]
    assert statuses == [200, 200, 200, 200, 200, 502, 502, 504, 200]
    assert '"code":"upstream_error"' in results[-1][2]  # the cut stream ends with an error event
    assert results[-1][2].rstrip().endswith("data: [DONE]")
    for (_status, request_id, _text), expected in zip(
        results, [200] * 5 + [502, 502, 504, 502], strict=True
    ):
        admitted[request_id] = expected
    admitted[gone] = 499
    refused = [request_id for status, request_id, _text in bad]
    assert [status for status, _rid, _text in bad] == [400, 404]

    events = gateway.events_for(list(admitted) + refused, expected=admitted)

    assert sorted(e["request_id"] for e in events) == sorted(admitted)
    assert {e["request_id"]: e["status"] for e in events} == admitted
    ok_events = [e for e in events if e["status"] == 200]
    assert all(e["prompt_tokens"] == 10 and e["completion_tokens"] == 4 for e in ok_events)
    assert all(e["tenant_id"] == str(customer.tenant.pk) for e in events)


def test_refused_requests_leave_no_event_and_no_key_is_ever_written(gateway, catalog):
    customer = make_customer(gateway, max_tokens_per_minute=10)
    headers = {"Authorization": f"Bearer {customer.key}"}

    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers,
                          json={"model": "fake", "messages": HI, "max_tokens": 50})  # fmt: skip
    ok = httpx.post(f"{gateway.url}/v1/embeddings", headers=headers,
                    json={"model": "e5", "input": "x"})  # fmt: skip
    bad_key = httpx.post(f"{gateway.url}/v1/chat/completions",
                         headers={"Authorization": f"Bearer {customer.key}x"},
                         json={"model": "fake", "messages": HI})  # fmt: skip

    assert response.status_code == 429
    assert ok.status_code == 200
    assert bad_key.status_code == 401
    events = gateway.events_for(
        [response.headers["x-request-id"], ok.headers["x-request-id"]],
        expected=[ok.headers["x-request-id"]],
    )
    assert [e["request_id"] for e in events] == [ok.headers["x-request-id"]]
    secret = customer.key[len("sk-") + 8 :]
    for path in (gateway.usage_path, gateway.log_path):
        text = path.read_text()
        assert customer.key not in text
        assert secret[:16] not in text
