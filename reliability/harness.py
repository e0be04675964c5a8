"""What every scenario shares: the running platform (its services and processes), a steady load
with the samplers beside it, and the judging of the result into one table row."""

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from reliability import checks
from reliability.load import Load
from reliability.services import OwnPostgres, OwnRedis, Proc

LEASE_SECONDS = 6
SETTLE_SECONDS = 1.5  # after the last request: long enough for releases, shorter than a lease


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Row:
    name: str
    sent: int
    admitted: int
    completed: int
    refused: Counter
    stored: int
    leaked: int
    bytes_over: int
    checks: list[Check]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


@dataclass
class Platform:
    redis: OwnRedis
    postgres: OwnPostgres
    env: dict
    gateways: list[Proc]
    urls: list[str]
    upstream: Proc
    ledger: Proc
    node: Proc
    keys: dict[str, str]  # tenant slug -> API key
    limits: dict[str, checks.TenantLimits]
    node_name: str
    # Processes a scenario killed on purpose (and restarted): not crashes.
    killed: set[str] = field(default_factory=set)

    @property
    def tenant_ids(self) -> list[int]:
        return [limits.tenant_id for limits in self.limits.values()]

    def processes(self) -> list[Proc]:
        return [*self.gateways, self.upstream, self.ledger, self.node, self.redis.proc]

    def crashed(self) -> list[str]:
        return [p.name for p in self.processes() if not p.alive()]


@dataclass
class Run:
    """One scenario's load and what was sampled while it ran."""

    platform: Platform
    load: Load
    samples: checks.Samples = field(default_factory=checks.Samples)
    leaked: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


async def under_load(platform: Platform, clients: list[dict],
                     action: Callable[[Run, asyncio.Event], Awaitable[None]]) -> Run:  # fmt: skip
    """Start `clients` (Load.steady keyword arguments) and the samplers, run `action` (it sets
    the stop event when the scenario is over, or returning sets it), wait for every request to
    end, then count the leases still held once releases have had time to run."""
    load = Load(tenants=platform.keys, gateways=platform.urls)
    run = Run(platform=platform, load=load)
    stop, sampler_stop = asyncio.Event(), asyncio.Event()
    sampler = asyncio.create_task(
        checks.sample(platform.redis.url, platform.limits, sampler_stop, run.samples)
    )
    steady = [asyncio.create_task(load.steady(stop, **options)) for options in clients]
    try:
        await action(run, stop)
    finally:
        stop.set()
        await asyncio.gather(*steady)
    await asyncio.sleep(SETTLE_SECONDS)
    run.leaked = await asyncio.to_thread(checks.live_leases, platform.redis.url,
                                         platform.tenant_ids)  # fmt: skip
    sampler_stop.set()
    await sampler
    await load.close()
    return run


def _spend_matches(platform: Platform) -> Check:
    from django.db.models import Sum

    from billing import money, spend
    from billing.models import UsageRecord
    from saas_platform import periods

    wrong = []
    for slug, limits in platform.limits.items():
        total = UsageRecord.objects.filter(tenant_id=limits.tenant_id).aggregate(s=Sum("amount"))
        ledger = money.to_picos(total["s"] or 0)
        held = spend.spend_get(limits.tenant_id, periods.month_key())
        if abs(held - ledger) > UsageRecord.objects.filter(tenant_id=limits.tenant_id).count():
            wrong.append(f"{slug}: Redis {held}, ledger {ledger}")  # beyond per-row rounding
    return Check("spend = ledger", not wrong, "; ".join(wrong) or "every tenant")


def judge(name: str, run: Run, extra: list[Check], *, exempt: set[str] = frozenset(),
          refund_at_least: set[str] = frozenset(), leak_ok: bool = False) -> Row:  # fmt: skip
    """The invariants every scenario is held to, plus its own (`extra`)."""
    platform, outcomes = run.platform, run.load.outcomes
    expected = {o.request_id for o in outcomes if o.admitted and o.request_id not in exempt}
    checks.wait_drained(platform.redis.url, expected)
    verdict = checks.judge_usage(
        run.load, platform.redis.url, platform.tenant_ids,
        exempt=set(exempt), refund_at_least=set(refund_at_least),
    )  # fmt: skip
    leaked = sum(run.leaked.values())
    samples = run.samples

    def listed(items: list[str]) -> str:
        return "; ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    found = [
        Check("usage stored once", not verdict.lost and not verdict.doubled,
              f"{verdict.stored} stored, {len(verdict.lost)} lost, {len(verdict.doubled)} "
              f"doubled {listed(verdict.lost + verdict.doubled)}".strip()),
        Check("Σ ledger tokens = Σ engine-reported", not verdict.token_errors,
              f"ledger {verdict.ledger_tokens}; engine reported {verdict.engine_tokens} "
              f"(+{verdict.counted} events counted by the gateway, within bounds) "
              f"{listed(verdict.token_errors)}".strip()),
        Check("usage status = what the client saw", not verdict.status_errors,
              listed(verdict.status_errors) or "all"),
        Check("reservation reconciled", not verdict.refund_errors,
              listed(verdict.refund_errors) or "every window entry = its real count"),
        Check("limits held at every sample", not samples.violations,
              f"{samples.taken} samples ({samples.failed} while Redis was away); peaks "
              + ", ".join(f"{t}: {p[0]} in flight, {p[1]} tok, {p[2]} req"
                          for t, p in samples.peak.items())
              + (f"; {listed(samples.violations)}" if samples.violations else "")),
        Check("no slot leaked", leak_ok or leaked == 0,
              f"{leaked} leases held {SETTLE_SECONDS}s after the last request"),
        Check("node bytes ≤ budget", not samples.node_violations,
              f"{samples.node_samples} samples, most over: {samples.bytes_over}"),
        Check("no process crashed", not platform.crashed(),
              ", ".join(platform.crashed()) or "all alive"),
        _spend_matches(platform),
        *extra,
    ]  # fmt: skip
    refused = Counter(o.reason for o in outcomes if o.reason)
    return Row(name=name, sent=len(outcomes), admitted=sum(o.admitted for o in outcomes),
               completed=sum(o.completed for o in outcomes), refused=refused,
               stored=verdict.stored, leaked=leaked, bytes_over=samples.bytes_over,
               checks=found, seconds=time.monotonic() - run.started)  # fmt: skip
