"""The fair queue's contract, run against both backends: Redis (one Lua call a decision, on one
Redis and on a Redis Cluster) and the in-process twin of the embedded default."""

import asyncio
import itertools
from collections import Counter

import pytest

from gateway.fair_queue_backends import Capacity, LocalFairQueue, RedisFairQueue
from models_mgmt.live import RedisLiveState, live_state
from tests.redis_cluster import url_of

_models = itertools.count(1)
ONE = Capacity(per_replica=1, replicated=False)
LEASE_MS = 1000


@pytest.fixture(params=["redis", "cluster", "local"])
def make_queue(request):
    if request.param != "local":
        url = url_of(request, "single" if request.param == "redis" else "cluster")
        return lambda: RedisFairQueue(url)
    shared = LocalFairQueue()
    return lambda: shared


def run(make_queue, scenario):
    """Run `scenario(queue, model_id)` on a fresh model in its own event loop."""

    async def main():
        queue = make_queue()
        try:
            return await scenario(queue, f"fq-model-{next(_models)}")
        finally:
            if isinstance(queue, RedisFairQueue):
                await queue.client.aclose()

    return asyncio.run(main())


async def enter(queue, model, waiter, tenant, *, weight=1, priority="normal", max_queued=100,
                capacity=ONE):  # fmt: skip
    return await queue.enter(model, waiter, tenant_id=tenant, weight=weight, priority=priority,
                             max_queued=max_queued, capacity=capacity,
                             lease_ms=LEASE_MS)  # fmt: skip


async def serve_all(queue, model, holder, capacity=ONE) -> list[str]:
    """Release the holder, then each request granted in turn: the order they were served."""
    order, current = [], holder
    while True:
        granted = await queue.release(model, current, capacity=capacity, lease_ms=LEASE_MS)
        if not granted:
            return order
        order += granted
        current = granted[0]


def test_slots_are_granted_up_to_capacity_and_a_release_grants_the_next_waiter(make_queue):
    two = Capacity(per_replica=2, replicated=False)

    async def scenario(queue, model):
        first = await enter(queue, model, "a", 1, capacity=two)
        second = await enter(queue, model, "b", 1, capacity=two)
        third = await enter(queue, model, "c", 1, capacity=two)
        waiting = await queue.poll(model, "c", capacity=two, lease_ms=LEASE_MS)
        granted = await queue.release(model, "a", capacity=two, lease_ms=LEASE_MS)
        polled = await queue.poll(model, "c", capacity=two, lease_ms=LEASE_MS)
        return first, second, third, waiting, granted, polled

    first, second, third, waiting, granted, polled = run(make_queue, scenario)

    assert (first.code, second.code, third.code) == (1, 1, 0)
    assert waiting.code == 0
    assert granted == ["c"]
    assert polled.code == 1


def test_weighted_tenants_are_served_in_proportion_to_their_weights(make_queue):
    async def scenario(queue, model):
        await enter(queue, model, "holder", 9)
        for i in range(12):
            await enter(queue, model, f"heavy-{i}", 1, weight=3)
            await enter(queue, model, f"light-{i}", 2, weight=1)
        return await serve_all(queue, model, "holder")

    order = run(make_queue, scenario)

    first_eight = Counter(waiter.split("-")[0] for waiter in order[:8])
    assert first_eight == {"heavy": 6, "light": 2}
    assert len(order) == 24  # everyone is served in the end


def test_a_tenant_that_starts_waiting_goes_ahead_of_another_tenants_backlog(make_queue):
    async def scenario(queue, model):
        await enter(queue, model, "holder", 1)
        for i in range(20):
            await enter(queue, model, f"noisy-{i}", 1)
        await queue.release(model, "holder", capacity=ONE, lease_ms=LEASE_MS)  # noisy-0 runs
        quiet = await enter(queue, model, "quiet", 2)
        return quiet, await serve_all(queue, model, "noisy-0")

    quiet, order = run(make_queue, scenario)

    assert quiet.code == 0
    assert order.index("quiet") <= 1  # served next, or right after the noisy head's turn


def test_a_tenants_own_requests_go_by_key_priority_then_arrival(make_queue):
    async def scenario(queue, model):
        await enter(queue, model, "holder", 1)
        for waiter, priority in [("low", "low"), ("n1", "normal"), ("high", "high"),
                                 ("n2", "normal")]:  # fmt: skip
            await enter(queue, model, waiter, 1, priority=priority)
        return await serve_all(queue, model, "holder")

    assert run(make_queue, scenario) == ["high", "n1", "n2", "low"]


def test_a_tenant_may_have_at_most_max_queued_waiting(make_queue):
    async def scenario(queue, model):
        held = await enter(queue, model, "a", 1, max_queued=1)  # runs: waiting is what counts
        waits = await enter(queue, model, "b", 1, max_queued=1)
        refused = await enter(queue, model, "c", 1, max_queued=1)
        other = await enter(queue, model, "d", 2, max_queued=1)  # another tenant's bound
        served = await queue.release(model, "a", capacity=ONE, lease_ms=LEASE_MS)
        served += await queue.release(model, served[0], capacity=ONE, lease_ms=LEASE_MS)
        again = await enter(queue, model, "e", 1, max_queued=1)  # b left the queue: room
        return held, waits, refused, other, served, again

    held, waits, refused, other, served, again = run(make_queue, scenario)

    assert (held.code, waits.code, refused.code, other.code, again.code) == (1, 0, -1, 0, 0)
    assert refused.ahead == 1
    assert served == ["d", "b"]  # tenant 2 had not been served yet: its turn came first


def test_a_waiter_that_leaves_gives_its_place_to_the_next(make_queue):
    async def scenario(queue, model):
        await enter(queue, model, "holder", 1)
        await enter(queue, model, "leaver", 2)
        await enter(queue, model, "stayer", 3)
        await queue.release(model, "leaver", capacity=ONE, lease_ms=LEASE_MS)
        gone = await queue.poll(model, "leaver", capacity=ONE, lease_ms=LEASE_MS)
        return gone, await serve_all(queue, model, "holder")

    gone, order = run(make_queue, scenario)

    assert gone.code == -2
    assert order == ["stayer"]


def test_entries_and_slots_of_a_dead_gateway_expire_after_their_lease(make_queue):
    async def scenario(queue, model):
        await enter(queue, model, "dead-holder", 1)
        await enter(queue, model, "dead-waiter", 1)
        await enter(queue, model, "alive", 2)
        await asyncio.sleep(0.6)
        renewed = await queue.renew(model, "dead-holder", lease_ms=LEASE_MS)  # once, then dies
        alive = await queue.poll(model, "alive", capacity=ONE, lease_ms=LEASE_MS)
        await asyncio.sleep(0.7)
        still = await queue.poll(model, "alive", capacity=ONE, lease_ms=LEASE_MS)
        await asyncio.sleep(0.7)  # the holder's renewed lease has run out now
        served = await queue.poll(model, "alive", capacity=ONE, lease_ms=LEASE_MS)
        lost = await queue.poll(model, "dead-waiter", capacity=ONE, lease_ms=LEASE_MS)
        return renewed, alive, still, served, lost

    renewed, alive, still, served, lost = run(make_queue, scenario)

    assert renewed
    assert (alive.code, still.code) == (0, 0)  # its polls keep its place
    assert served.code == 1
    assert lost.code == -2  # it stopped polling: its place expired, it was never served


def test_capacity_counts_every_ready_replica_of_a_process_model(make_queue, settings):
    per_two = Capacity(per_replica=2, replicated=True)

    async def scenario(queue, model):
        if isinstance(queue, RedisFairQueue):
            live = RedisLiveState(queue.url)
        else:
            settings.REDIS_URL = ""  # the twin reads the in-process routing table
            live = live_state()
        # No replica ready yet (the first one is loading): one replica's worth.
        before = [(await enter(queue, model, f"a{i}", 1, capacity=per_two)).code for i in range(3)]
        live.publish(model, "n1", "http://127.0.0.1:1/v1")
        live.publish(model, "n2", "http://127.0.0.1:2/v1")
        polled = await queue.poll(model, "a2", capacity=per_two, lease_ms=LEASE_MS)
        after = [(await enter(queue, model, f"b{i}", 1, capacity=per_two)).code for i in range(2)]
        for node in ("n1", "n2"):
            live.forget(model, node)
        return before, polled.code, after

    assert run(make_queue, scenario) == ([1, 1, 0], 1, [1, 0])
