"""The cost-hold and key-scope contract of admission, on one Redis, a Redis Cluster and the
embedded default: a request holds its largest cost at admission and settles its real cost at
the end, so spent + held never passes a budget (nor used + held a prepaid balance); a key's own
limits are counted beside its tenant's in the same call."""

import asyncio
import itertools

import pytest

from billing import spend
from gateway.admission import Limits, LocalAdmission, RedisAdmission, Subject
from tests.redis_cluster import url_of

_tenant_ids = itertools.count(2_000_000)
UNITS = 10**12  # picos in one unit of the currency


@pytest.fixture(params=["redis", "cluster", "local"])
def make_backend(request, settings):
    settings.ADMISSION_LEASE_SECONDS = 1
    if request.param == "local":
        settings.REDIS_URL = ""
        shared = LocalAdmission()
        return lambda: shared
    settings.REDIS_URL = url_of(request, "single" if request.param == "redis" else "cluster")
    return lambda: RedisAdmission(settings.REDIS_URL)


def run(make_backend, scenario):
    async def main():
        backend = make_backend()
        try:
            return await scenario(backend, next(_tenant_ids))
        finally:
            if isinstance(backend, RedisAdmission):
                await backend.client.aclose()

    return asyncio.run(main())


def budget(picos: int, concurrency: int = 100) -> Limits:
    return Limits(max_concurrent=concurrency, tokens_per_minute=10**9, budget_picos=picos)


def test_the_last_hold_that_fits_is_admitted_and_a_settlement_frees_the_rest(make_backend):
    limits = budget(100)

    async def scenario(backend, tenant):
        subject = Subject(tenant)
        held = [await backend.admit(subject, f"r{i}", limits, 1, hold=25) for i in range(5)]
        await backend.settle(subject, "r0", 1, 1, cost=10)  # 15 of its 25 come back
        after = await backend.admit(subject, "r5", limits, 1, hold=15)
        over = await backend.admit(subject, "r6", limits, 1, hold=1)
        return held, after, over, spend.spend_get(tenant, spend.month_key())

    held, after, over, spent = run(make_backend, scenario)

    assert [d.admitted for d in held] == [True, True, True, True, False]  # 4 x 25 = 100
    assert (held[4].reason, held[4].scope) == ("budget", "tenant")
    assert after.admitted  # 10 spent + 75 held + 15 = 100: exactly the budget
    assert (over.admitted, over.reason) == (False, "budget")
    assert spent == 10


def test_a_burst_never_holds_more_than_the_budget(make_backend):
    limits = budget(10 * 37)

    async def scenario(backend, tenant):
        subject = Subject(tenant)
        return await asyncio.gather(
            *[backend.admit(subject, f"r{i}", limits, 1, hold=37) for i in range(40)]
        )

    decisions = run(make_backend, scenario)

    assert sum(d.admitted for d in decisions) == 10
    assert {d.reason for d in decisions if not d.admitted} == {"budget"}


def test_money_is_compared_exactly_past_what_a_double_holds(make_backend):
    """20,000 units in picos is past 2^53: a float comparison would call these equal."""
    spent = 20_000 * UNITS + 1

    async def scenario(backend, tenant):
        spend.counter_set(spend.spend_key(tenant, spend.month_key()), spent)
        limits = budget(20_000 * UNITS + 2)
        subject = Subject(tenant)
        too_much = await backend.admit(subject, "a", limits, 1, hold=2)
        fits = await backend.admit(subject, "b", limits, 1, hold=1)
        return too_much, fits

    too_much, fits = run(make_backend, scenario)

    assert (too_much.admitted, too_much.reason) == (False, "budget")
    assert fits.admitted


def test_settling_twice_adds_the_cost_once(make_backend):
    async def scenario(backend, tenant):
        subject = Subject(tenant)
        await backend.admit(subject, "a", budget(1000), 1, hold=100)
        await backend.settle(subject, "a", 1, 1, cost=40)
        await backend.settle(subject, "a", 1, 1, cost=40)  # a retried settlement
        return spend.spend_get(tenant, spend.month_key())

    assert run(make_backend, scenario) == 40


def test_the_hold_of_a_request_whose_gateway_died_goes_with_its_lease(make_backend):
    async def scenario(backend, tenant):
        subject = Subject(tenant)
        limits = budget(100)
        first = await backend.admit(subject, "died", limits, 1, hold=100)
        blocked = await backend.admit(subject, "b", limits, 1, hold=100)
        await asyncio.sleep(1.2)  # the lease (1 s) was never renewed
        after = await backend.admit(subject, "c", limits, 1, hold=100)
        return first, blocked, after, spend.spend_get(tenant, spend.month_key())

    first, blocked, after, spent = run(make_backend, scenario)

    assert first.admitted
    assert not blocked.admitted
    assert after.admitted
    assert spent == 0  # nothing charged for a request that never settled


def test_a_prepaid_balance_is_never_overdrawn(make_backend):
    async def scenario(backend, tenant):
        spend.counter_set(spend.credit_granted_key(tenant), 100)
        subject = Subject(tenant, prepaid=True)
        limits = Limits(max_concurrent=100, tokens_per_minute=10**9)
        burst = await asyncio.gather(
            *[backend.admit(subject, f"r{i}", limits, 1, hold=30) for i in range(10)]
        )
        admitted = [f"r{i}" for i, d in enumerate(burst) if d.admitted]
        for lease_id in admitted:
            await backend.settle(subject, lease_id, 1, 1, cost=30)
        last = await backend.admit(subject, "last", limits, 1, hold=10)
        empty = await backend.admit(subject, "empty", limits, 1, hold=1)
        return burst, last, empty, spend.counter_get(spend.credit_used_key(tenant))

    burst, last, empty, used = run(make_backend, scenario)

    assert sum(d.admitted for d in burst) == 3  # 3 x 30 of 100
    assert {d.reason for d in burst if not d.admitted} == {"credits"}
    assert last.admitted  # 90 used + 10: the balance to its end
    assert (empty.admitted, empty.reason) == (False, "credits")
    assert used == 90


def test_a_keys_own_limits_are_counted_beside_its_tenants(make_backend):
    tenant_limits = Limits(max_concurrent=10, tokens_per_minute=1000)
    key_limits = Limits(max_concurrent=2, tokens_per_minute=1000, budget_picos=50)

    async def scenario(backend, tenant):
        limited = Subject(tenant, key_id=tenant * 10 + 1)
        other = Subject(tenant)  # another key of the tenant, without limits of its own
        both = (tenant_limits, key_limits)
        by_key = [await backend.admit(limited, f"k{i}", both, 1, hold=10) for i in range(3)]
        await backend.settle(limited, "k0", 1, 1, cost=10)
        key_budget = [await backend.admit(limited, f"b{i}", both, 1, hold=20) for i in range(2)]
        others = [await backend.admit(other, f"o{i}", (tenant_limits,), 1) for i in range(8)]
        full = await backend.admit(other, "o8", (tenant_limits,), 1)
        return by_key, key_budget, others, full, await backend.in_flight(tenant)

    by_key, key_budget, others, full, in_flight = run(make_backend, scenario)

    assert [d.admitted for d in by_key] == [True, True, False]
    assert (by_key[2].reason, by_key[2].scope) == ("concurrency", "key")
    assert by_key[2].usage[1].in_flight == 2
    assert by_key[2].usage[0].in_flight == 2
    # 10 spent + 10 held + 20 = 40 fits the key's 50; one more 20 does not (the budget is
    # checked before concurrency, which is full too).
    assert key_budget[0].admitted
    assert (key_budget[1].admitted, key_budget[1].reason, key_budget[1].scope) == (
        False,
        "budget",
        "key",
    )
    assert all(d.admitted for d in others)  # the tenant's 10: 2 by the key, 8 by others
    assert (full.admitted, full.reason, full.scope) == (False, "concurrency", "tenant")
    assert in_flight == 10


def test_a_keys_budget_refuses_as_the_key(make_backend):
    async def scenario(backend, tenant):
        subject = Subject(tenant, key_id=tenant * 10 + 2)
        limits = (budget(1000), budget(30))
        first = await backend.admit(subject, "a", limits, 1, hold=20)
        second = await backend.admit(subject, "b", limits, 1, hold=20)
        return first, second

    first, second = run(make_backend, scenario)

    assert first.admitted
    assert (second.admitted, second.reason, second.scope) == (False, "budget", "key")
