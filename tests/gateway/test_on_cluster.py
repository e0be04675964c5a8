"""The whole gateway on a Redis Cluster: admission, the finishing round trip (a pipeline that
spans slots: the tenant's, the usage stream's) and the key cache, through real server processes."""

import asyncio
import time

import httpx
import orjson
import pytest

from billing.ledger import STREAM
from gateway.admission import RedisAdmission
from saas_platform import redis_clients
from tests.gateway_server import fake_model, gateway_env, make_customer
from tests.servers import free_port, gateway_command, running

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def cluster_gateway(redis_cluster, tmp_path, catalog):
    port = free_port()
    env = gateway_env(REDIS_URL=redis_cluster)
    with running(gateway_command(port), ready_url=f"http://127.0.0.1:{port}/healthz", env=env,
                 log=tmp_path / "gateway.log"):  # fmt: skip
        yield type("ClusterGateway", (), {"url": f"http://127.0.0.1:{port}"})


def _stream_ids(url: str) -> set[str]:
    """The request ids of the events waiting in the usage stream (no ledger worker runs)."""
    entries = redis_clients.sync_client(url).xrange(STREAM)
    return {orjson.loads(fields[b"event"])["request_id"] for _id, fields in entries}


def test_requests_are_admitted_finished_and_billed_on_a_cluster(
    cluster_gateway, redis_cluster, fake_upstream_url
):
    model = fake_model(fake_upstream_url, "slowish", "chunks=10&delay=0.1")  # a second each
    customer = make_customer(cluster_gateway, max_concurrent_requests=2)
    headers = {"Authorization": f"Bearer {customer.key}"}

    bodies = [{"model": model, "messages": HI},
              {"model": model, "messages": HI, "stream": True},
              {"model": model, "messages": HI}]  # fmt: skip

    async def run():
        async with httpx.AsyncClient(base_url=cluster_gateway.url, timeout=30) as client:
            calls = [client.post("/v1/chat/completions", headers=headers, json=body)
                     for body in bodies]  # fmt: skip
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429]  # the limit of 2 holds across both worker processes
    admitted = {r.headers["x-request-id"] for r in responses if r.status_code == 200}
    refused = {r.headers["x-request-id"] for r in responses if r.status_code == 429}
    # A whole answer's event is appended just after its last byte: wait for it.
    deadline = time.monotonic() + 10
    while not admitted <= (stored := _stream_ids(redis_cluster)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert admitted <= stored
    assert not refused & stored

    async def in_flight():
        return await RedisAdmission(redis_cluster).in_flight(customer.tenant.pk)

    assert asyncio.run(in_flight()) == 0  # every lease was released in the finishing trip
