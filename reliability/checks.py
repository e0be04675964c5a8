"""What a scenario is judged on: samples of the Redis admission keys and the nodes' bytes taken
while it runs, and, once its usage has drained, the ledger, the published events and what the
fake engine logged, joined request by request."""

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from reliability.load import Load, Outcome
from reliability.services import VAR
from saas_platform.redis_clients import async_client, sync_client

WINDOW_MS = 60_000
STATUS_OF_CODE = {"upstream_error": 502, "upstream_timeout": 504}


def _keys(tenant_id: int) -> dict[str, str]:
    tag = f"adm:{{{tenant_id}}}"
    return {name: f"{tag}:{name}" for name in ("leases", "tok", "amt", "req")}


@dataclass
class TenantLimits:
    tenant_id: int
    max_concurrent: int
    tokens_per_minute: int
    requests_per_minute: int | None


@dataclass
class Samples:
    taken: int = 0
    failed: int = 0  # Redis unreachable (its restart): nothing to read
    peak: dict = field(default_factory=dict)  # tenant -> (in flight, window tokens, requests)
    violations: list[str] = field(default_factory=list)
    node_samples: int = 0
    bytes_over: int = 0  # the most any node was over its budget
    node_violations: list[str] = field(default_factory=list)


async def _sample_tenant(client, name: str, limits: TenantLimits, samples: Samples) -> None:
    keys = _keys(limits.tenant_id)
    seconds, micros = await client.time()
    now = seconds * 1000 + micros // 1000
    async with client.pipeline(transaction=True) as pipe:
        pipe.zcount(keys["leases"], f"({now}", "+inf")
        pipe.zrangebyscore(keys["tok"], f"({now - WINDOW_MS}", "+inf")
        pipe.zcount(keys["req"], f"({now - WINDOW_MS}", "+inf")
        pipe.hgetall(keys["amt"])
        in_flight, entries, requests, amounts = await pipe.execute()
    tokens = sum(int(amounts.get(entry, 0)) for entry in entries)
    old = samples.peak.get(name, (0, 0, 0))
    samples.peak[name] = (max(old[0], in_flight), max(old[1], tokens), max(old[2], requests))
    if in_flight > limits.max_concurrent:
        samples.violations.append(f"{name}: {in_flight} in flight > {limits.max_concurrent}")
    if tokens > limits.tokens_per_minute:
        samples.violations.append(f"{name}: {tokens} tokens in 60s > {limits.tokens_per_minute}")
    rpm = limits.requests_per_minute
    if rpm and requests > rpm:
        samples.violations.append(f"{name}: {requests} requests in 60s > {rpm}")


def _node_bytes() -> list[tuple[str, int, int]]:
    from django.db import connections

    from models_mgmt.models import Node

    try:
        nodes = Node.objects.prefetch_related("placements")
        return [
            (node.name, sum(p.vram_bytes for p in node.placements.all() if p.holds_memory),
             node.vram_budget_bytes)
            for node in nodes
        ]  # fmt: skip
    finally:
        connections.close_all()


async def sample(redis_url: str, tenants: dict[str, TenantLimits], stop: asyncio.Event,
                 samples: Samples) -> None:  # fmt: skip
    """Every 100 ms: each tenant's live leases and 60-second windows against its limits; every
    500 ms each node's held bytes against its budget."""
    client = async_client(redis_url)
    tick = 0
    while not stop.is_set():
        try:
            for name, limits in tenants.items():
                await _sample_tenant(client, name, limits, samples)
            samples.taken += 1
        except (RedisError, OSError):
            samples.failed += 1
        if tick % 5 == 0:
            try:
                nodes = await asyncio.to_thread(_node_bytes)
            except Exception:  # noqa: BLE001 - PostgreSQL restarting: no sample this time
                nodes = []
            for node, used, budget in nodes:
                samples.node_samples += 1
                if used > budget:
                    samples.bytes_over = max(samples.bytes_over, used - budget)
                    samples.node_violations.append(f"{node}: {used} > {budget}")
        tick += 1
        await asyncio.sleep(0.1)


def live_leases(redis_url: str, tenant_ids: list[int]) -> dict[int, int]:
    client = sync_client(redis_url)
    seconds, micros = client.time()
    now = seconds * 1000 + micros // 1000
    return {t: client.zcount(_keys(t)["leases"], f"({now}", "+inf") for t in tenant_ids}


def window_amounts(redis_url: str, tenant_ids: list[int]) -> dict[str, int]:
    """Each admitted request's entry in its tenant's token window: its reservation, replaced by
    the real count when it was released."""
    client = sync_client(redis_url)
    amounts: dict[str, int] = {}
    for tenant_id in tenant_ids:
        for entry, tokens in client.hgetall(_keys(tenant_id)["amt"]).items():
            amounts[entry.decode()] = int(tokens)
    return amounts


def wait_drained(redis_url: str, request_ids: set[str], timeout: float = 60) -> None:
    """Until every expected id is in the ledger and the usage stream is empty and acknowledged
    (or the timeout: what is missing then is reported as lost)."""
    from django.db import connections

    from billing.ledger import GROUP, STREAM
    from billing.models import UsageRecord

    client = sync_client(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stored = set(UsageRecord.objects.filter(request_id__in=request_ids)
                         .values_list("request_id", flat=True))  # fmt: skip
            pending = client.xlen(STREAM) + (client.xpending(STREAM, GROUP)["pending"]
                                             if client.exists(STREAM) else 0)  # fmt: skip
        except Exception:  # noqa: BLE001 - a service still coming back
            connections.close_all()
            stored, pending = set(), 1
        if stored >= request_ids and pending == 0:
            break
        time.sleep(0.3)
    time.sleep(1.0)  # a duplicate delivery, if there were one, would show by now


def engine_log() -> dict[str, dict]:
    path = VAR / "upstream.ndjson"
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return {r["user"]: r for r in records if r.get("user")}


def published() -> Counter:
    """How many usage events each request id was published as (the gateways' NDJSON copy)."""
    path = VAR / "usage.ndjson"
    if not path.exists():
        return Counter()
    return Counter(json.loads(line)["request_id"] for line in path.read_text().splitlines()
                   if line)  # fmt: skip


def ledger(request_ids) -> dict[str, object]:
    from billing.models import UsageRecord

    return {r.request_id: r for r in UsageRecord.objects.filter(request_id__in=request_ids)}


def expected_status(outcome: Outcome) -> set[int]:
    if outcome.left:
        return {499, 200}  # 200 only if the answer had ended server-side (checked below)
    if outcome.error_event:
        return {STATUS_OF_CODE.get(outcome.error_event, 502)}
    if outcome.status is None:
        return {499, 200, 502, 504}  # no answer came back (its gateway was killed)
    return {outcome.status}


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    token_errors: list[str] = field(default_factory=list)
    status_errors: list[str] = field(default_factory=list)
    refund_errors: list[str] = field(default_factory=list)
    ledger_tokens: int = 0
    engine_tokens: int = 0  # what the engine reported, for the requests it reported on
    counted: int = 0  # events the gateway counted itself (no report reached it)
    stored: int = 0


def judge_usage(load: Load, redis_url: str, tenant_ids: list[int], *, exempt: set[str],
                refund_at_least: set[str] = frozenset()) -> Verdict:  # fmt: skip
    """Request by request: stored once, with the tokens the engine reported (or, where no report
    reached the gateway, between what the client received and what the engine sent), the
    status the client saw, and its reservation reconciled to the same count."""
    admitted = [o for o in load.outcomes if o.admitted]
    rows = ledger([o.request_id for o in admitted])
    engine = engine_log()
    counts = published()
    amounts = window_amounts(redis_url, tenant_ids)
    verdict = Verdict(stored=len(rows))
    for outcome in admitted:
        rid = outcome.request_id
        row = rows.get(rid)
        if counts[rid] > 1:
            verdict.doubled.append(rid)
        if row is None:
            if rid not in exempt:
                verdict.lost.append(rid)
            continue
        _judge_tokens(outcome, row, engine.get(outcome.tag), verdict)
        if row.status not in expected_status(outcome):
            saw = f"{outcome.status}/{outcome.error_event or '-'}"
            verdict.status_errors.append(f"{rid}: stored {row.status}, client saw {saw}")
        booked = amounts.get(rid)
        total = row.prompt_tokens + row.completion_tokens
        if booked is not None and rid not in exempt:
            wrong = booked < total if rid in refund_at_least else booked != total
            if wrong:
                verdict.refund_errors.append(f"{rid}: window holds {booked}, used {total}")
    return verdict


def _judge_tokens(outcome: Outcome, row, sent: dict | None, verdict: Verdict) -> None:
    rid = outcome.request_id
    verdict.ledger_tokens += row.prompt_tokens + row.completion_tokens
    if sent is None:  # an engine other than the fake (llama.cpp): what the client was shown
        if outcome.usage:
            verdict.engine_tokens += outcome.usage["total_tokens"]
            stored = (row.prompt_tokens, row.completion_tokens)
            if sum(stored) != outcome.usage["total_tokens"]:
                verdict.token_errors.append(f"{rid}: stored {stored}, shown {outcome.usage}")
        return
    if not row.counted:
        stored = (row.prompt_tokens, row.completion_tokens)
        if not sent["usage_reported"]:
            # The engine failed before producing anything (a 500, a hang): nothing to bill.
            if stored != (0, 0) or sent["completion_tokens"]:
                verdict.token_errors.append(f"{rid}: stored {stored}, engine reported nothing")
            return
        verdict.engine_tokens += sent["prompt_tokens"] + sent["completion_tokens"]
        if stored != (sent["prompt_tokens"], sent["completion_tokens"]):
            verdict.token_errors.append(f"{rid}: stored {stored} as reported, engine logged {sent}")
        return
    verdict.counted += 1
    if outcome.completed and outcome.status == 200 and sent["usage_reported"]:
        verdict.token_errors.append(f"{rid}: the engine reported usage, the ledger counted")
    if not outcome.chunks <= row.completion_tokens <= sent["completion_tokens"]:
        verdict.token_errors.append(f"{rid}: stored {row.completion_tokens} completion tokens; "
                                    f"client got {outcome.chunks}, engine sent "
                                    f"{sent['completion_tokens']}")  # fmt: skip
    if outcome.left and row.status == 200 and not sent["usage_reported"]:
        verdict.status_errors.append(f"{rid}: client left before the end, stored as 200")
