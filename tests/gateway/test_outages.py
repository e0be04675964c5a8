"""When Redis is gone the gateway refuses (fail closed) or admits without limits (fail open), by
setting; a recorder that fails holds up no response and loses no event."""

import os
import signal
import time

import httpx
import pytest

from tests.gateway_server import LEASE_SECONDS, fake_model, gateway_env, make_customer
from tests.servers import free_port, gateway_command, running

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def start_gateway(tmp_path):
    def start(**env):
        port = free_port()
        return port, running(gateway_command(port, workers=1),
                             ready_url=f"http://127.0.0.1:{port}/healthz",
                             env=gateway_env(**env), log=tmp_path / "gateway.log")  # fmt: skip

    return start


@pytest.mark.parametrize(("fail_open", "status"), [("0", 503), ("1", 200)])
def test_without_redis_admission_fails_closed_or_open_by_setting(
    gateway, catalog, start_gateway, fail_open, status
):
    customer = make_customer(gateway)
    port, server = start_gateway(REDIS_URL="redis://127.0.0.1:1/0", ADMISSION_FAIL_OPEN=fail_open)

    with server:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                              headers={"Authorization": f"Bearer {customer.key}"},
                              json={"model": "fake", "messages": HI})  # fmt: skip
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text

    assert response.status_code == status
    if status == 503:
        assert response.json()["error"]["code"] == "admission_unavailable"
        assert response.headers["retry-after"] == "1"
        assert 'gateway_admission_backend_errors_total{outcome="refused"} 1.0' in metrics
    else:
        assert 'gateway_admission_backend_errors_total{outcome="admitted"} 1.0' in metrics


def test_a_failing_recorder_holds_up_no_response_and_loses_no_event(
    gateway, catalog, start_gateway, tmp_path
):
    customer = make_customer(gateway)
    flaky, block, ndjson = tmp_path / "flaky.ndjson", tmp_path / "down", tmp_path / "usage.ndjson"
    block.touch()
    port, server = start_gateway(
        USAGE_RECORDERS="tests.fakes.recorders.FlakyRecorder",
        FLAKY_RECORDER_PATH=str(flaky),
        FLAKY_RECORDER_BLOCK=str(block),
        USAGE_NDJSON_PATH=str(ndjson),
    )

    with server:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {customer.key}"}
        body = {"model": "fake", "messages": HI}
        responses = [httpx.post(url, headers=headers, json=body) for _ in range(3)]
        ids = {r.headers["x-request-id"] for r in responses}
        deadline = time.monotonic() + 10
        while not ndjson.exists() or len(ndjson.read_text().splitlines()) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        flaky_while_down = flaky.read_text() if flaky.exists() else ""
        block.unlink()  # the store comes back
        deadline = time.monotonic() + 15
        while not flaky.exists() or len(flaky.read_text().splitlines()) < 3:
            assert time.monotonic() < deadline, "the failing recorder never caught up"
            time.sleep(0.1)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert flaky_while_down == ""
    recorded = [line for line in flaky.read_text().splitlines() if line]
    assert len(recorded) == 3
    assert {line.split('"request_id":"')[1].split('"')[0] for line in recorded} == ids
    assert 'gateway_usage_recorder_failures_total{recorder="FlakyRecorder"}' in metrics


def test_a_killed_gateway_leaks_its_slot_only_until_the_lease_expires(
    gateway, catalog, fake_upstream_url, start_gateway
):
    model = fake_model(fake_upstream_url, "endless", "chunks=1000&delay=0.05")
    customer = make_customer(gateway, max_concurrent_requests=1)
    headers = {"Authorization": f"Bearer {customer.key}"}
    port, doomed = start_gateway()

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": model, "messages": HI, "stream": True}
    short = {"model": "fake", "messages": HI}
    with (
        doomed as process,
        httpx.Client(timeout=30) as client,
        client.stream("POST", url, headers=headers, json=body) as response,
    ):
        next(response.iter_lines())
        os.kill(process.pid, signal.SIGKILL)  # uvicorn with one worker: the worker itself
        killed = time.monotonic()
        refused = client.post(f"{gateway.url}/v1/chat/completions", headers=headers, json=short)
        while True:
            retry = client.post(f"{gateway.url}/v1/chat/completions", headers=headers, json=short)
            if retry.status_code == 200 or time.monotonic() - killed > LEASE_SECONDS + 5:
                break
            time.sleep(0.2)
        waited = time.monotonic() - killed

    assert refused.status_code == 429  # the dead process's lease still holds the slot...
    assert retry.status_code == 200  # ...until it expires
    assert waited <= LEASE_SECONDS + 1
