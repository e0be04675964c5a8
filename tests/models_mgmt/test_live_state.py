"""The shared live state of placements, on both backends: routing to the least busy ready
node, in-flight counts, last use, withdrawal before an unload."""

import asyncio

import pytest

from models_mgmt.live import LocalLiveState, RedisLiveState
from saas_platform.redis_clients import async_client
from tests.redis_cluster import flush, url_of


def _redis_live(request) -> RedisLiveState:
    # One Redis, or a Redis Cluster (tests/redis_cluster.py).
    url = url_of(request, "single" if request.param == "redis" else "cluster")
    flush(url)
    return RedisLiveState(url)


@pytest.fixture(params=["redis", "cluster", "local"])
def live(request):
    return LocalLiveState() if request.param == "local" else _redis_live(request)


@pytest.fixture(params=["redis", "cluster"])
def redis_live(request):
    """Only the Redis backends: the embedded default has no pipeline (the gateway calls
    `finished()` there)."""
    return _redis_live(request)


def test_routes_to_the_ready_node_with_the_fewest_requests_in_flight(live):
    live.publish("llama", "n1", "http://127.0.0.1:9001/v1")
    live.publish("llama", "n2", "http://127.0.0.1:9002/v1")

    async def scenario():
        first = await live.route("llama")
        second = await live.route("llama")
        await live.finished("llama", first[0])
        third = await live.route("llama")
        return first, second, third

    first, second, third = asyncio.run(scenario())

    assert {first[0], second[0]} == {"n1", "n2"}  # spread while both are busy
    assert third[0] == first[0]  # the one that finished is the least busy again
    assert live.in_flight("llama", first[0]) == 1
    assert live.in_flight("llama", second[0]) == 1
    assert live.last_used_ms("llama", first[0]) is not None


def test_no_ready_node_routes_nowhere_and_a_withdrawn_node_takes_no_new_requests(live):
    assert asyncio.run(live.route("llama")) is None
    live.publish("llama", "n1", "http://127.0.0.1:9001/v1")
    live.publish("llama", "n2", "http://127.0.0.1:9002/v1")
    live.withdraw("llama", "n1")

    async def five_routes():
        return await asyncio.gather(*[live.route("llama") for _ in range(5)])

    routes = asyncio.run(five_routes())

    assert {node for node, _endpoint in routes} == {"n2"}
    assert live.endpoints("llama") == {"n2": "http://127.0.0.1:9002/v1"}
    live.forget("llama", "n2")
    assert live.in_flight("llama", "n2") == 0
    assert asyncio.run(live.route("llama")) is None


def test_concurrent_routes_count_every_request(live):
    live.publish("llama", "n1", "http://127.0.0.1:9001/v1")

    async def scenario():
        await asyncio.gather(*[live.route("llama") for _ in range(50)])
        await asyncio.gather(*[live.finished("llama", "n1") for _ in range(20)])

    asyncio.run(scenario())

    assert live.in_flight("llama", "n1") == 30


def test_a_queued_finish_ends_the_count_in_the_callers_round_trip(redis_live):
    live = redis_live
    live.publish("llama", "n1", "http://127.0.0.1:9001/v1")
    live.publish("mistral", "n1", "http://127.0.0.1:9001/v1")

    async def scenario():
        for model in ("llama", "llama", "mistral"):
            await live.route(model)
        # The gateway's own client and pipeline (not decoding), two models: two slots.
        pipe = async_client(live.url).pipeline(transaction=False)
        live.queue_finished(pipe, "llama", "n1")
        live.queue_finished(pipe, "mistral", "n1")
        return await pipe.execute()

    results = asyncio.run(scenario())

    assert results == [1, 0]  # one command each, the counts after it
    assert live.in_flight("llama", "n1") == 1
    assert live.in_flight("mistral", "n1") == 0
