"""The scenarios: each puts the platform under a steady load, breaks one thing, lets it recover,
stops by itself, and is judged on the shared invariants plus its own."""

import asyncio
import random
import time
from collections import Counter

from reliability.harness import LEASE_SECONDS, Check, Platform, Row, Run, judge, under_load
from reliability.load import Outcome, Spec
from reliability.services import LOGS, ledger_worker, wait_until

FAST = "fake"  # 8 chunks, 30 ms apart
LONG = "fake-long"  # 40 chunks, 50 ms apart: a 2-second stream


def mixed(rng: random.Random) -> Spec:
    return Spec(FAST, stream=rng.random() < 0.7, max_tokens=16)


def long_streams(rng: random.Random) -> Spec:
    return Spec(LONG, stream=True, max_tokens=64) if rng.random() < 0.6 else mixed(rng)


def pressing(rng: random.Random) -> Spec:
    """Large reservations (reconciled down at the end) against a small per-minute limit."""
    return Spec(FAST, stream=rng.random() < 0.5, max_tokens=100)


def background(**extra) -> list[dict]:
    """The steady tenant on every gateway, and the tight tenant pressing on its limits."""
    return [{"tenant": "steady", "workers": 3, "pick": mixed, **extra},
            {"tenant": "tight", "workers": 3, "pick": pressing}]  # fmt: skip


def _between(outcomes: list[Outcome], start: float, end: float) -> list[Outcome]:
    return [o for o in outcomes if start <= o.started and o.ended <= end]


def baseline(platform: Platform) -> Row:
    async def action(run: Run, stop: asyncio.Event) -> None:
        await asyncio.sleep(6)

    run = asyncio.run(under_load(platform, background(), action))
    statuses = Counter(o.status for o in run.load.outcomes if o.tenant == "steady")
    return judge("baseline: steady load, nothing broken", run, [
        Check("steady tenant all 200", set(statuses) == {200}, dict(statuses).__repr__()),
    ])  # fmt: skip


def gateway_killed(platform: Platform) -> Row:
    """SIGKILL one gateway process while it relays streams; its leases must expire within
    ADMISSION_LEASE_SECONDS, the other gateways and tenants must not notice."""
    victim = 1
    facts: dict = {}

    async def action(run: Run, stop: asyncio.Event) -> None:
        def relaying() -> list[Outcome]:
            return [o for o in run.load.outcomes if o.gateway == victim and o.request_id
                    and not o.ended and o.spec.model == LONG]  # fmt: skip

        await asyncio.sleep(2)
        for _ in range(50):  # until it relays a stream, at most 5 s more
            if relaying():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # mid-stream
        in_flight = [o for o in run.load.outcomes if o.gateway == victim and o.request_id
                     and not o.ended]  # fmt: skip
        platform.gateways[victim].kill()
        killed_at = time.monotonic()
        platform.killed.add(platform.gateways[victim].name)
        ids = {o.request_id for o in in_flight}
        facts["in_flight"] = len(ids)

        def expired() -> bool:
            return not ids & _live_lease_ids(platform)

        await asyncio.to_thread(wait_until, expired, timeout=LEASE_SECONDS + 5, what="leases")
        facts["expired_after"] = time.monotonic() - killed_at
        platform.gateways[victim].start()
        await asyncio.sleep(2)

    clients = [{"tenant": "steady", "workers": 4, "pick": long_streams},
               {"tenant": "bystander", "workers": 2, "pick": long_streams, "gateways": [0, 2]},
               {"tenant": "tight", "workers": 1, "pick": pressing, "gateways": [0, 2]}]  # fmt: skip
    run = asyncio.run(under_load(platform, clients, action))
    cut = {o.request_id for o in run.load.outcomes
           if o.gateway == victim and o.request_id and not o.completed}  # fmt: skip
    bystander = Counter(o.status for o in run.load.outcomes if o.tenant == "bystander")
    return judge("gateway SIGKILLed mid-stream", run, [
        Check("killed gateway's leases expired in time",
              facts.get("in_flight", 0) > 0 and facts.get("expired_after", 99) <= LEASE_SECONDS + 1,
              f"{facts.get('in_flight')} leases held by it, gone after "
              f"{facts.get('expired_after', 0):.1f}s (lease {LEASE_SECONDS}s)"),
        Check("other tenant unaffected", set(bystander) == {200}, repr(dict(bystander))),
    ], exempt=cut)  # fmt: skip


def _live_lease_ids(platform: Platform) -> set[str]:
    import redis

    client = redis.Redis.from_url(platform.redis.url)
    seconds, micros = client.time()
    now = seconds * 1000 + micros // 1000
    ids: set[str] = set()
    for tenant_id in platform.tenant_ids:
        for lease in client.zrangebyscore(f"adm:{{{tenant_id}}}:leases", f"({now}", "+inf"):
            ids.add(lease.decode())
    return ids


def redis_restarted(platform: Platform) -> Row:
    """Kill Redis (SIGKILL) under load, keep it away 4 s, start it again on the same port and
    files. Gateways 0 and 1 fail closed (503), gateway 2 runs with ADMISSION_FAIL_OPEN=1."""
    window: dict[str, float] = {}

    async def action(run: Run, stop: asyncio.Event) -> None:
        await asyncio.sleep(3)
        window["down"] = time.monotonic()
        platform.redis.kill()
        platform.killed.add("redis")
        await asyncio.sleep(4)
        window["up"] = time.monotonic()  # from here on it may answer
        await asyncio.to_thread(platform.redis.start)
        await asyncio.sleep(8)

    run = asyncio.run(under_load(platform, background(), action))
    outcomes = run.load.outcomes
    during = _between(outcomes, window["down"] + 0.3, window["up"])
    closed = Counter((o.status, o.code) for o in during if o.gateway in (0, 1))
    opened = Counter(o.status for o in during if o.gateway == 2)
    late = [o for o in outcomes if o.started > window["up"] + 3]
    recovered = Counter(o.status for o in late)
    hit = {o.request_id for o in outcomes if o.admitted and o.ended >= window["down"] - 1
           and o.started <= window["up"] + 1}  # fmt: skip
    return judge("Redis killed and restarted", run, [
        Check("fail closed: 503 admission_unavailable while away",
              bool(closed) and set(closed) <= {(503, "admission_unavailable")},
              repr(dict(closed))),
        Check("fail open (ADMISSION_FAIL_OPEN=1): served while away",
              bool(opened) and set(opened) == {200}, repr(dict(opened))),
        Check("recovered by itself (3 s after restart)",
              bool(late) and set(recovered) <= {200, 429}, repr(dict(recovered))),
    ], refund_at_least=hit)  # fmt: skip


def postgres_restarted(platform: Platform) -> Row:
    """pg_ctl stop -m immediate under load, 4 s away, start: requests keep being served, usage
    waits in the stream and is stored afterwards, once."""
    from django.db import connections

    window: dict[str, float] = {}

    async def action(run: Run, stop: asyncio.Event) -> None:
        await asyncio.sleep(3)
        window["down"] = time.monotonic()
        await asyncio.to_thread(platform.postgres.stop_immediate)
        await asyncio.sleep(4)
        await asyncio.to_thread(platform.postgres.start)
        window["up"] = time.monotonic()
        await asyncio.sleep(5)

    run = asyncio.run(under_load(platform, background(), action))
    connections.close_all()
    during = _between(run.load.outcomes, window["down"], window["up"])
    statuses = Counter((o.status, o.code) for o in during)
    served = {(200, ""), (429, "rate_limit_exceeded")}
    return judge("PostgreSQL restarted (immediate stop)", run, [
        Check("served while PostgreSQL was away", bool(during) and set(statuses) <= served,
              repr(dict(statuses))),
    ])  # fmt: skip


def ledger_worker_killed(platform: Platform) -> Row:
    """The ledger worker dies mid-batch (LEDGER_CRASH_AT: before the commit, then after it and
    before the acknowledgement); a fresh worker must store every event exactly once."""
    import redis

    from billing.ledger import GROUP, STREAM

    client = redis.Redis.from_url(platform.redis.url)
    seen: dict[str, int] = {}

    async def crash_at(point: str) -> None:
        worker = ledger_worker(dict(platform.env, LEDGER_CRASH_AT=point), name=f"ledger-{point}")
        worker.start()
        log = LOGS / f"{worker.name}.log"

        def crashed() -> bool:
            return "exitcode 137" in log.read_text(errors="replace")

        # Until its pool process has died at the crash point (a batch read, not acknowledged).
        await asyncio.to_thread(wait_until, crashed, timeout=30, what=f"a crash {point}")
        await asyncio.sleep(1)
        seen[point] = client.xpending(STREAM, GROUP)["pending"]
        worker.stop()  # its pool processes died at the crash point; this ends the rest

    async def action(run: Run, stop: asyncio.Event) -> None:
        await asyncio.to_thread(platform.ledger.stop)
        await crash_at("before_commit")
        await crash_at("after_commit")
        await asyncio.to_thread(platform.ledger.start)
        await asyncio.sleep(3)

    run = asyncio.run(under_load(platform, background(), action))
    return judge("ledger worker killed mid-batch", run, [
        Check("batches were in flight at each crash",
              all(seen.get(p, 0) > 0 for p in ("before_commit", "after_commit")),
              f"unacknowledged events at the kill: {seen}"),
    ])  # fmt: skip


def engine_failures(platform: Platform) -> Row:
    """The engine answers 500, hangs past UPSTREAM_READ_TIMEOUT, closes mid-stream, or stalls
    mid-stream: 502/504 or a clean error event, the slot released, the reservation refunded."""
    kinds = [Spec("fake-500", stream=False), Spec("fake-500", stream=True),
             Spec("fake-hang", stream=False), Spec("fake-hang", stream=True),
             Spec("fake-cut", stream=True), Spec("fake-stall", stream=True)]  # fmt: skip

    def failing(rng: random.Random) -> Spec:
        return rng.choice(kinds)

    async def action(run: Run, stop: asyncio.Event) -> None:
        await asyncio.sleep(14)  # hangs and stalls take UPSTREAM_READ_TIMEOUT (8 s) each

    clients = [*background(), {"tenant": "failing", "workers": 4, "pick": failing}]
    run = asyncio.run(under_load(platform, clients, action))
    failed = [o for o in run.load.outcomes if o.tenant == "failing"]
    wrong = [f"{o.spec.model}/{'stream' if o.spec.stream else 'json'}: {o.status} "
             f"{o.code or o.error_event}" for o in failed if not _clean_failure(o)]  # fmt: skip
    seen = Counter(f"{o.spec.model} {o.status} {o.code or o.error_event}" for o in failed)
    return judge("engine 500 / hang / cut / stall", run, [
        Check("client got 502/504 or a clean error event", bool(failed) and not wrong,
              "; ".join(wrong[:3]) or repr(dict(seen))),
    ])  # fmt: skip


def _clean_failure(outcome: Outcome) -> bool:
    if outcome.status == 429:
        return True
    if outcome.status in (502, 504):
        return outcome.code in ("upstream_error", "upstream_timeout")
    # Headers were sent: the stream must end with an error event and [DONE].
    return outcome.status == 200 and outcome.done and bool(outcome.error_event)


def clients_leave(platform: Platform) -> Row:
    """Clients drop streams at random moments (curl --max-time), many of them right around the
    end of the stream, while the gateway is releasing the lease and recording usage."""

    def leaving(rng: random.Random) -> Spec:
        # LONG streams last about 2.0 s: a third leave within 150 ms of the end.
        after = rng.uniform(1.9, 2.2) if rng.random() < 0.35 else rng.uniform(0.05, 2.0)
        return Spec(LONG, stream=True, max_tokens=64, leave_after=after)

    async def action(run: Run, stop: asyncio.Event) -> None:
        await asyncio.sleep(12)

    clients = [{"tenant": "steady", "workers": 6, "pick": leaving, "pause": 0},
               {"tenant": "tight", "workers": 1, "pick": mixed}]  # fmt: skip
    run = asyncio.run(under_load(platform, clients, action))
    left = [o for o in run.load.outcomes if o.left]
    return judge("clients disconnecting mid-stream", run, [
        Check("clients left mid-stream", len(left) > 20,
              f"{len(left)} left, {sum(o.chunks for o in left)} chunks received before"),
    ])  # fmt: skip


def _placements(node: str) -> dict[str, str]:
    from django.db import connections

    from models_mgmt.models import Placement

    try:
        return dict(Placement.objects.filter(node__name=node)
                    .values_list("model__model_id", "state"))  # fmt: skip
    finally:
        connections.close_all()


def _engines(node: str) -> set[str]:
    from models_mgmt.models import Node
    from models_mgmt.placements import engine_processes

    return {e.model_id for e in engine_processes(Node.objects.get(name=node)).running()}


def _held(node: str) -> tuple[dict[str, str], set[str]]:
    from django.db import connections

    try:
        return _placements(node), _engines(node)
    finally:
        connections.close_all()


def node_worker_killed(platform: Platform) -> Row:
    """SIGKILL the node's worker while it loads a model (a llama.cpp server process starting):
    the waiting request fails cleanly (503) and a retry loads it; a second model then evicts
    it; the node never holds more than its budget, and its engines match its placements."""
    node, events = platform.node_name, []
    held: dict = {}

    async def ask(run: Run, model: str) -> Outcome:
        outcome = await run.load.one("steady", 0, Spec(model, stream=False, max_tokens=8))
        events.append(f"{model}: {outcome.status} {outcome.code}".strip())
        return outcome

    async def action(run: Run, stop: asyncio.Event) -> None:
        await asyncio.sleep(2)
        cold = asyncio.create_task(ask(run, "llama"))
        await asyncio.to_thread(wait_until, lambda: _placements(node).get("llama") == "loading",
                                timeout=30, what="the load to start")  # fmt: skip
        platform.node.kill()
        platform.killed.add(platform.node.name)
        events.append("node worker SIGKILLed while loading llama")
        platform.node.start()
        await asyncio.to_thread(wait_until, lambda: _placements(node).get("llama") != "loading",
                                timeout=30, what="the restarted worker to reconcile")  # fmt: skip
        held["after_kill"] = await asyncio.to_thread(_held, node)
        await cold
        await ask(run, "llama")  # the retry: loads for real
        await ask(run, "proc-b")  # no room for both: evicts llama
        held["end"] = await asyncio.to_thread(_held, node)

    run = asyncio.run(under_load(platform, background(), action))
    statuses = [e.split(": ")[1] for e in events if ": " in e]
    after_kill, end = held.get("after_kill", ({}, set())), held.get("end", ({}, set()))
    return judge("node worker SIGKILLed mid-load", run, [
        Check("load failed cleanly, then retried", statuses[:1] in (["503 model_not_ready"],
              ["200"]) and statuses[1:] == ["200", "200"], "; ".join(events)),
        Check("no placement stuck, no stray engine",
              "loading" not in after_kill[0].values() and set(after_kill[0]) == after_kill[1],
              f"after the kill: placements {after_kill[0]}, engines {sorted(after_kill[1])}"),
        Check("engines = placements at the end", set(end[0]) == end[1] == {"proc-b"},
              f"placements {end[0]}, engines {sorted(end[1])}"),
    ])  # fmt: skip


SCENARIOS = [baseline, gateway_killed, redis_restarted, postgres_restarted, node_worker_killed,
             ledger_worker_killed, engine_failures, clients_leave]  # fmt: skip
