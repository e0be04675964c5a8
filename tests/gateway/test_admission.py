"""The admission contract, run against both backends: Redis (one Lua call each) and the
in-process one of the embedded default."""

import asyncio
import itertools
import time

import pytest
import time_machine

from gateway.admission import Limits, LocalAdmission, RedisAdmission, Subject
from tests.redis_cluster import url_of

_tenant_ids = itertools.count(1_000_000)


@pytest.fixture(params=["redis", "cluster", "local"])
def make_backend(request, settings):
    settings.ADMISSION_LEASE_SECONDS = 1
    if request.param != "local":  # one Redis, or a Redis Cluster (tests/redis_cluster.py)
        url = url_of(request, "single" if request.param == "redis" else "cluster")
        return lambda: RedisAdmission(url)
    shared = LocalAdmission()
    return lambda: shared


def run(make_backend, scenario):
    """Run `scenario(backend, tenant_id)` on a fresh tenant in its own event loop."""

    async def main():
        backend = make_backend()
        try:
            return await scenario(backend, next(_tenant_ids))
        finally:
            if isinstance(backend, RedisAdmission):
                await backend.client.aclose()

    return asyncio.run(main())


def test_concurrency_admits_up_to_the_limit_and_a_release_frees_a_slot(make_backend):
    limits = Limits(max_concurrent=2, tokens_per_minute=1000)

    async def scenario(backend, tenant):
        first = await backend.admit(Subject(tenant), "a", limits, 10)
        second = await backend.admit(Subject(tenant), "b", limits, 10)
        third = await backend.admit(Subject(tenant), "c", limits, 10)
        await backend.settle(Subject(tenant), "a", 10, 10)
        fourth = await backend.admit(Subject(tenant), "d", limits, 10)
        return first, second, third, fourth, await backend.in_flight(tenant)

    first, second, third, fourth, in_flight = run(make_backend, scenario)

    assert (first.admitted, second.admitted, third.admitted, fourth.admitted) == (
        True, True, False, True,
    )  # fmt: skip
    assert third.reason == "concurrency"
    assert third.retry_after >= 1
    assert in_flight == 2


def test_a_lease_that_is_not_renewed_expires_and_a_renewed_one_does_not(make_backend):
    limits = Limits(max_concurrent=2, tokens_per_minute=1000)

    async def scenario(backend, tenant):
        await backend.admit(Subject(tenant), "kept", limits, 1)
        await backend.admit(Subject(tenant), "crashed", limits, 1)
        await asyncio.sleep(0.6)
        renewed = await backend.renew(Subject(tenant), "kept")
        await asyncio.sleep(0.6)  # "crashed" is now past its lease, "kept" is not
        in_flight = await backend.in_flight(tenant)
        lost = await backend.renew(Subject(tenant), "crashed")
        return renewed, in_flight, lost

    renewed, in_flight, lost = run(make_backend, scenario)

    assert renewed
    assert in_flight == 1
    assert not lost


def test_tokens_per_minute_reserve_then_reconcile_to_the_real_count(make_backend):
    limits = Limits(max_concurrent=10, tokens_per_minute=100)

    async def scenario(backend, tenant):
        first = await backend.admit(Subject(tenant), "a", limits, 60)
        refused = await backend.admit(Subject(tenant), "b", limits, 50)
        await backend.settle(Subject(tenant), "a", 60, 15)  # it used 15 of its 60: 45 come back
        admitted = await backend.admit(Subject(tenant), "c", limits, 50)
        full = await backend.admit(Subject(tenant), "d", limits, 40)
        return first, refused, admitted, full

    first, refused, admitted, full = run(make_backend, scenario)

    assert first.admitted
    assert first.tokens_used == 60
    assert not refused.admitted
    assert refused.reason == "tokens_per_minute"
    assert 55 <= refused.retry_after <= 60  # until the first reservation leaves the window
    assert admitted.admitted
    assert admitted.tokens_used == 65
    assert not full.admitted


def test_a_reservation_larger_than_the_limit_can_never_fit(make_backend):
    async def scenario(backend, tenant):
        return await backend.admit(Subject(tenant), "a", Limits(5, 100), 101)

    decision = run(make_backend, scenario)

    assert not decision.admitted
    assert decision.reason == "too_large"


def test_requests_per_minute(make_backend):
    limits = Limits(max_concurrent=10, tokens_per_minute=1000, requests_per_minute=2)

    async def scenario(backend, tenant):
        decisions = [await backend.admit(Subject(tenant), f"r{i}", limits, 1) for i in range(3)]
        await backend.settle(Subject(tenant), "r0", 1, 1)  # settling does not give back the request
        decisions.append(await backend.admit(Subject(tenant), "r3", limits, 1))
        return decisions

    decisions = run(make_backend, scenario)

    assert [d.admitted for d in decisions] == [True, True, False, False]
    assert decisions[2].reason == "requests_per_minute"
    assert decisions[1].requests_used == 2


def test_fifty_concurrent_admissions_never_exceed_the_token_limit(make_backend):
    limits = Limits(max_concurrent=100, tokens_per_minute=200)

    async def scenario(backend, tenant):
        return await asyncio.gather(
            *[backend.admit(Subject(tenant), f"r{i}", limits, 10) for i in range(50)]
        )

    decisions = run(make_backend, scenario)

    assert sum(d.admitted for d in decisions) == 20
    assert max(d.tokens_used for d in decisions if d.admitted) == 200


def test_a_release_is_idempotent(make_backend):
    limits = Limits(max_concurrent=1, tokens_per_minute=100)

    async def scenario(backend, tenant):
        await backend.admit(Subject(tenant), "a", limits, 50)
        await backend.settle(Subject(tenant), "a", 50, 20)
        await backend.settle(Subject(tenant), "a", 50, 20)
        return await backend.admit(Subject(tenant), "b", limits, 80)

    decision = run(make_backend, scenario)

    assert decision.admitted
    assert decision.tokens_used == 100


def test_the_token_window_slides_over_any_sixty_seconds(settings):
    backend = LocalAdmission()  # Redis keeps its own clock; the Lua runs the same algorithm
    limits = Limits(max_concurrent=10, tokens_per_minute=100)
    start = time.time()

    async def admit_at(offset: float, lease_id: str, tokens: int):
        with time_machine.travel(start + offset, tick=False):
            return await backend.admit(Subject(7), lease_id, limits, tokens)

    async def scenario():
        return [
            await admit_at(0, "a", 70),
            await admit_at(30, "b", 30),
            await admit_at(59, "c", 10),  # 100 already in the last 60 s
            await admit_at(61, "d", 70),  # "a" has left the window
            await admit_at(62, "e", 1),
        ]

    decisions = asyncio.run(scenario())

    assert [d.admitted for d in decisions] == [True, True, False, True, False]
    assert decisions[2].retry_after == pytest.approx(1, abs=0.01)
