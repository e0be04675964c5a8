"""Admission under a tenant's limits, shared by every gateway process (the seed's
Tenant.ConsumeTokens and its middleware's concurrency limit, made distributed).

A request is admitted with one call: a concurrency lease (with an expiry, renewed while the
request runs, so a killed process leaks its slot only until the lease expires) and a reservation
of its estimated tokens in the tenant's tokens-per-minute sliding window (and a slot in the
requests-per-minute window when the tenant has one). It is released with one more, which also
reconciles the reservation to the real token count. Redis backs it when REDIS_URL is set (one
Lua script a call); otherwise an in-process backend with the same contract.
"""

import asyncio
import logging
import math
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings
from redis.exceptions import NoScriptError, RedisError

from billing.credits import credits_reconcile
from billing.money import from_picos, to_picos, usage_amount
from billing.pricing import aprice_now
from billing.spend import (
    SPEND_TTL_SECONDS,
    credit_granted_key,
    credit_used_key,
    key_spend_key,
    local_counters,
    spend_key,
    spend_reconcile,
)
from gateway.admission_lua import ADMIT, RENEW, SETTLE
from gateway.parsing import InferenceRequest
from saas_platform import metrics
from saas_platform.errors import RateLimited, ServiceUnavailable
from saas_platform.periods import month_key, seconds_to_next_month
from saas_platform.redis_clients import async_client
from saas_platform.threads import in_db_thread
from tenants.refusals import count_refusal
from tenants.services import Authenticated

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Limits:
    """One scope's limits (the tenant's, or its key's own); None or 0: no such limit."""

    max_concurrent: int | None
    tokens_per_minute: int | None
    requests_per_minute: int | None = None
    budget_picos: int | None = None  # the monthly budget, in picos (billing.money.to_picos)


@dataclass(frozen=True)
class Subject:
    """Whose limits a request is admitted under: its tenant's and, when its key has limits of
    its own, its key's (key_id set); prepaid tenants' requests are also held against their
    credits."""

    tenant_id: int
    key_id: int | None = None
    prepaid: bool = False

    @property
    def scopes(self) -> int:
        return 1 if self.key_id is None else 2


@dataclass(frozen=True)
class Usage:
    """What one scope had in use when admission answered."""

    in_flight: int
    tokens_used: int
    requests_used: int
    reset_tokens: float  # seconds until the token window is empty again


@dataclass(frozen=True)
class Decision:
    admitted: bool
    # None when admitted; else "concurrency", "requests_per_minute", "tokens_per_minute",
    # "too_large" (the reservation alone exceeds the per-minute limit: it can never fit),
    # "budget" (the budget left cannot cover the request's hold) or "credits".
    reason: str | None
    scope: str | None  # "tenant" or "key": whose limit refused it
    retry_after: float  # seconds until the request could fit
    usage: tuple[Usage, ...]  # the tenant's, then the key's when it has limits

    @property
    def in_flight(self) -> int:
        return self.usage[0].in_flight

    @property
    def tokens_used(self) -> int:
        return self.usage[0].tokens_used

    @property
    def requests_used(self) -> int:
        return self.usage[0].requests_used


_REASONS = {
    1: None,
    -1: "concurrency",
    -2: "requests_per_minute",
    -3: "too_large",
    -4: "tokens_per_minute",
    -5: "budget",
    -6: "credits",
}
_SCOPES = {0: None, 1: "tenant", 2: "key"}


class AdmissionBackend(Protocol):
    async def admit(
        self,
        subject: Subject,
        lease_id: str,
        limits: tuple[Limits, ...],
        tokens: int,
        hold: int = 0,
    ) -> Decision: ...

    async def settle(
        self, subject: Subject, lease_id: str, reserved: int, actual: int, cost: int = 0
    ) -> None: ...

    async def renew(self, subject: Subject, lease_id: str) -> bool: ...

    async def in_flight(self, tenant_id: int) -> int: ...


def _lease_ms() -> int:
    return int(settings.ADMISSION_LEASE_SECONDS * 1000)


def _as_tuple(limits) -> tuple[Limits, ...]:
    return (limits,) if isinstance(limits, Limits) else tuple(limits)


class RedisAdmission:
    def __init__(self, url: str):
        self.client = async_client(url)
        self._admit = self.client.register_script(ADMIT)
        self._settle = self.client.register_script(SETTLE)
        self._renew = self.client.register_script(RENEW)

    @staticmethod
    def _keys(subject: Subject) -> list[str]:
        tenant_id, month = subject.tenant_id, month_key()
        tag = f"adm:{{{tenant_id}}}"
        keys = [f"{tag}:{name}" for name in _SCOPE_KEYS]
        keys += [
            spend_key(tenant_id, month),
            credit_granted_key(tenant_id),
            credit_used_key(tenant_id),
        ]
        if subject.key_id is not None:
            keys += [f"{tag}:k{subject.key_id}:{name}" for name in _SCOPE_KEYS]
            keys.append(key_spend_key(tenant_id, subject.key_id, month))
        return keys

    async def admit(self, subject, lease_id, limits, tokens, hold=0) -> Decision:
        args = [lease_id, _lease_ms(), tokens, hold, int(subject.prepaid)]
        for scope in _as_tuple(limits)[: subject.scopes]:
            args += [
                scope.max_concurrent or 0,
                scope.tokens_per_minute or 0,
                scope.requests_per_minute or 0,
                -1 if scope.budget_picos is None else scope.budget_picos,
            ]
        answer = await self._admit(keys=self._keys(subject), args=args)
        code, scope, *counts, retry_ms = (int(value) for value in answer)
        usage = tuple(
            Usage(counts[i], counts[i + 1], counts[i + 2], counts[i + 3] / 1000)
            for i in range(0, len(counts), 4)
        )
        return Decision(code == 1, _REASONS[code], _SCOPES[scope], retry_ms / 1000, usage)

    def _settle_args(self, lease_id, reserved, actual, cost, subject) -> list:
        return [lease_id, reserved, actual, cost, int(subject.prepaid), SPEND_TTL_SECONDS]

    async def settle(self, subject, lease_id, reserved, actual, cost=0) -> None:
        await self._settle(
            keys=self._keys(subject),
            args=self._settle_args(lease_id, reserved, actual, cost, subject),
        )

    def queue_settle(self, pipe, subject, lease_id, reserved, actual, cost) -> None:
        """`settle`, queued on a pipeline (the one round trip that finishes a request). A
        Redis that lost its script cache answers NOSCRIPT: the caller then calls `settle`."""
        keys = self._keys(subject)
        # execute_command, not evalsha: a cluster's pipeline refuses evalsha() itself.
        pipe.execute_command(
            "EVALSHA",
            self._settle.sha,
            len(keys),
            *keys,
            *self._settle_args(lease_id, reserved, actual, cost, subject),
        )

    def queue_renew(self, pipe, subject, lease_id) -> None:
        keys = self._keys(subject)
        pipe.execute_command("EVALSHA", self._renew.sha, len(keys), *keys, lease_id, _lease_ms())

    async def renew(self, subject, lease_id) -> bool:
        return bool(await self._renew(keys=self._keys(subject), args=[lease_id, _lease_ms()]))

    async def in_flight(self, tenant_id) -> int:
        key = f"adm:{{{tenant_id}}}:leases"
        now_ms = int(time.time() * 1000)
        await self.client.zremrangebyscore(key, "-inf", now_ms)
        return int(await self.client.zcard(key))


_SCOPE_KEYS = ("leases", "tok", "amt", "sum", "req", "holds", "held")


class _Window:
    """One scope's state in the embedded default."""

    def __init__(self):
        self.leases: dict[str, float] = {}
        self.tokens: deque[list] = deque()  # [admitted_at, entry id, tokens], oldest first
        self.amounts: dict[str, list] = {}
        self.used = 0
        self.requests: deque[float] = deque()
        self.holds: dict[str, int] = {}
        self.held = 0


class LocalAdmission:
    """The embedded default: the same algorithm in process memory, for one server process; the
    money counters are billing.spend's in-process ones."""

    def __init__(self):
        self._lock = threading.Lock()
        self._windows: dict[tuple, _Window] = {}

    def _scopes(self, subject: Subject) -> list[tuple[_Window, str]]:
        month = month_key()
        found = [
            (
                self._windows.setdefault(("t", subject.tenant_id), _Window()),
                spend_key(subject.tenant_id, month),
            )
        ]
        if subject.key_id is not None:
            window = self._windows.setdefault(("k", subject.key_id), _Window())
            found.append((window, key_spend_key(subject.tenant_id, subject.key_id, month)))
        return found

    def _expire(self, state: _Window, now: float) -> None:
        while state.tokens and state.tokens[0][0] <= now - WINDOW_SECONDS:
            _at, entry_id, amount = state.tokens.popleft()
            state.amounts.pop(entry_id, None)
            state.used -= amount
        while state.requests and state.requests[0] <= now - WINDOW_SECONDS:
            state.requests.popleft()
        for lease_id in [lid for lid, expiry in state.leases.items() if expiry <= now]:
            del state.leases[lease_id]
            state.held -= state.holds.pop(lease_id, 0)

    @staticmethod
    def _usage(state: _Window, now: float) -> Usage:
        reset = state.tokens[-1][0] + WINDOW_SECONDS - now if state.tokens else 0.0
        return Usage(len(state.leases), state.used, len(state.requests), reset)

    @staticmethod
    def _refusal(state: _Window, limit: Limits, tokens: int, now: float):
        """(reason, retry after) if this scope cannot take the request now, else None."""
        tpm = limit.tokens_per_minute
        if tpm and tokens > tpm:
            return "too_large", WINDOW_SECONDS
        if limit.max_concurrent and len(state.leases) >= limit.max_concurrent:
            return "concurrency", 1.0
        rpm = limit.requests_per_minute
        if rpm and len(state.requests) >= rpm:
            return "requests_per_minute", state.requests[0] + WINDOW_SECONDS - now
        if tpm and state.used + tokens > tpm:
            freed, wait = 0, float(WINDOW_SECONDS)
            for admitted_at, _entry, amount in state.tokens:
                freed += amount
                if state.used - freed + tokens <= tpm:
                    wait = admitted_at + WINDOW_SECONDS - now
                    break
            return "tokens_per_minute", wait
        return None

    async def admit(self, subject, lease_id, limits, tokens, hold=0) -> Decision:
        now = time.time()
        limits = _as_tuple(limits)
        counters, counters_lock = local_counters()
        with self._lock, counters_lock:
            scopes = self._scopes(subject)
            for state, _spend in scopes:
                self._expire(state, now)
            usage = tuple(self._usage(state, now) for state, _spend in scopes)

            def refuse(reason: str, index: int, retry: float) -> Decision:
                return Decision(False, reason, _SCOPES[index + 1], retry, usage)

            for index, ((state, spend), limit) in enumerate(zip(scopes, limits, strict=False)):
                budget = limit.budget_picos
                if budget is not None and counters.get(spend, 0) + state.held + hold > budget:
                    return refuse("budget", index, 0.0)
            if subject.prepaid:
                granted = counters.get(credit_granted_key(subject.tenant_id), 0)
                used = counters.get(credit_used_key(subject.tenant_id), 0)
                if used + scopes[0][0].held + hold > granted:
                    return refuse("credits", 0, 0.0)
            # The same order of checks as the script: every scope's "never fits" first, then
            # concurrency, requests and tokens.
            checks = [
                self._refusal(state, limit, tokens, now)
                for (state, _spend), limit in zip(scopes, limits, strict=False)
            ]
            for wanted in ("too_large", "concurrency", "requests_per_minute", "tokens_per_minute"):
                for index, found in enumerate(checks):
                    if found is not None and found[0] == wanted:
                        return refuse(wanted, index, found[1])
            for (state, _spend), limit in zip(scopes, limits, strict=False):
                state.leases[lease_id] = now + settings.ADMISSION_LEASE_SECONDS
                entry = [now, lease_id, tokens]
                state.tokens.append(entry)
                state.amounts[lease_id] = entry
                state.used += tokens
                if limit.requests_per_minute:
                    state.requests.append(now)
                state.holds[lease_id] = hold
                state.held += hold
            after = tuple(self._usage(state, now) for state, _spend in scopes)
            return Decision(
                True,
                None,
                None,
                0.0,
                tuple(
                    Usage(u.in_flight, u.tokens_used, u.requests_used, WINDOW_SECONDS)
                    for u in after
                ),
            )

    async def settle(self, subject, lease_id, reserved, actual, cost=0) -> None:
        now = time.time()
        counters, counters_lock = local_counters()
        with self._lock, counters_lock:
            for index, (state, spend) in enumerate(self._scopes(subject)):
                self._expire(state, now)
                state.leases.pop(lease_id, None)
                entry = state.amounts.get(lease_id)
                if entry is not None:
                    state.used += actual - entry[2]
                    entry[2] = actual
                elif actual > reserved:
                    late = [now, f"{lease_id}:late", actual - reserved]
                    state.tokens.append(late)
                    state.amounts[late[1]] = late
                    state.used += late[2]
                if lease_id in state.holds:  # settled once: a second settle adds nothing
                    state.held -= state.holds.pop(lease_id)
                    counters[spend] = counters.get(spend, 0) + cost
                    if subject.prepaid and index == 0:
                        used = credit_used_key(subject.tenant_id)
                        counters[used] = counters.get(used, 0) + cost

    async def renew(self, subject, lease_id) -> bool:
        now = time.time()
        renewed = False
        with self._lock:
            for state, _spend in self._scopes(subject):
                if state.leases.get(lease_id, 0) > now:
                    state.leases[lease_id] = now + settings.ADMISSION_LEASE_SECONDS
                    renewed = True
        return renewed

    async def in_flight(self, tenant_id) -> int:
        with self._lock:
            state = self._windows.setdefault(("t", tenant_id), _Window())
            self._expire(state, time.time())
            return len(state.leases)


class _EmbeddedCounters:
    """The embedded default keeps the money counters in this process's memory, so it loads a
    tenant's from the ledgers when it first sees the tenant and again every
    CATALOG_CACHE_SECONDS: spend stored before a restart, and credits granted by another
    process (`credits grant`)."""

    def __init__(self):
        self.loaded_at: dict[int, float] = {}
        self._load = in_db_thread(self._load_now)

    @staticmethod
    def _load_now(tenant_id: int) -> None:
        spend_reconcile(tenant_ids=[tenant_id])
        credits_reconcile(tenant_ids=[tenant_id])

    async def ensure(self, tenant_id: int) -> None:
        now = time.monotonic()
        if now - self.loaded_at.get(tenant_id, float("-inf")) <= settings.CATALOG_CACHE_SECONDS:
            return
        self.loaded_at[tenant_id] = now
        await self._load(tenant_id)


_embedded_counters = _EmbeddedCounters()


_backends: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AdmissionBackend]" = (
    weakref.WeakKeyDictionary()
)
_local = LocalAdmission()


def backend() -> AdmissionBackend:
    """The process's backend. A Redis client belongs to the event loop it was made in, so there
    is one per loop (one in a server process)."""
    if not settings.REDIS_URL:
        return _local
    loop = asyncio.get_running_loop()
    if loop not in _backends:
        _backends[loop] = RedisAdmission(settings.REDIS_URL)
    return _backends[loop]


class AdmissionUnavailable(ServiceUnavailable):
    code = "admission_unavailable"


_REFUSAL_MESSAGES = {
    "concurrency": "Too many concurrent requests for this {whose} (limit {max_concurrent}). "
    "Retry when one of them has finished.",
    "requests_per_minute": "Rate limit reached for requests per minute for this {whose} "
    "(limit {rpm}).",
    "tokens_per_minute": "Rate limit reached for tokens per minute for this {whose} (limit "
    "{tpm}, in use {used}, requested {tokens}).",
    "budget": "The {whose}'s monthly budget of {budget} {currency} has too little left to cover "
    "this request's largest possible cost, {hold} {currency} (its prompt and max_tokens at "
    "this model's price). A smaller max_tokens may fit; otherwise requests are refused until "
    "next month or until the budget is raised.",
    "credits": "The prepaid credit balance has too little left to cover this request's largest "
    "possible cost, {hold} {currency} (its prompt and max_tokens at this model's price). A "
    "smaller max_tokens may fit; otherwise ask for more credits.",
    "too_large": "Request too large: it reserves {tokens} tokens (estimated prompt plus "
    "max_tokens) but the {whose}'s limit is {tpm} tokens per minute, so it can never be "
    "admitted. Lower max_tokens or shorten the prompt.",
}
_WHOSE = {"tenant": "tenant", "key": "API key"}


class _Renewer:
    """Renews every running lease of one event loop (one server process), every third of the
    lease time, all in one round trip: one task per process rather than one per request."""

    def __init__(self):
        self.leases: dict[str, Lease] = {}
        self._task: asyncio.Task | None = None

    def add(self, lease: "Lease") -> None:
        self.leases[lease.lease_id] = lease
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def discard(self, lease: "Lease") -> None:
        self.leases.pop(lease.lease_id, None)

    async def _run(self) -> None:
        try:
            while self.leases:
                await asyncio.sleep(settings.ADMISSION_LEASE_SECONDS / 3)
                now = asyncio.get_running_loop().time()
                for lease in [lease for lease in self.leases.values() if lease.deadline <= now]:
                    self.discard(lease)  # past its deadline: left to expire
                try:
                    await self._renew(list(self.leases.values()))
                except Exception:  # noqa: BLE001 - keep renewing through a Redis blip
                    logger.warning("renewing %d leases failed", len(self.leases))
        finally:
            self._task = None

    @staticmethod
    async def _renew(leases: list["Lease"]) -> None:
        batched = [lease for lease in leases if isinstance(lease.backend, RedisAdmission)]
        if batched:
            pipe = batched[0].backend.client.pipeline(transaction=False)
            for lease in batched:
                lease.backend.queue_renew(pipe, lease.subject, lease.lease_id)
            results = await pipe.execute(raise_on_error=False)
            if any(isinstance(result, NoScriptError) for result in results):
                for lease in batched:  # Redis lost its scripts: one by one, loading it again
                    await lease.backend.renew(lease.subject, lease.lease_id)
        for lease in leases:
            if not isinstance(lease.backend, RedisAdmission):
                await lease.backend.renew(lease.subject, lease.lease_id)


_renewers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Renewer]" = (
    weakref.WeakKeyDictionary()
)


def _renewer() -> _Renewer:
    loop = asyncio.get_running_loop()
    renewer = _renewers.get(loop)
    if renewer is None:
        renewer = _renewers[loop] = _Renewer()
    return renewer


class Lease:
    """An admitted request's hold on its limits, renewed while it runs. `settle` releases it,
    reconciles the token reservation to the real count and adds the real cost; it is
    idempotent and never raises."""

    def __init__(
        self,
        *,
        backend: AdmissionBackend | None,
        subject: Subject,
        lease_id: str,
        tokens: int,
        price=None,
        hold: int = 0,
    ):
        self.backend = backend
        self.subject = subject
        self.lease_id = lease_id
        self.reserved = tokens
        self.price = price  # the price the hold was made at; the real cost is priced the same
        self.hold = hold  # picos held against a budget or credits (0: nothing limits the cost)
        # No request holds its lease past this (event-loop time): the renewer stops renewing
        # it, so a response that never ends frees its slot by itself.
        self.deadline = asyncio.get_running_loop().time() + settings.UPSTREAM_TOTAL_TIMEOUT
        self._released = False
        if backend is not None:
            _renewer().add(self)

    @property
    def tenant_id(self) -> int:
        return self.subject.tenant_id

    @property
    def holds_cost(self) -> bool:
        return self.hold > 0

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """The request's real cost in picos, exactly as the ledger will price it."""
        return to_picos(usage_amount(prompt_tokens, completion_tokens, self.price, cached_tokens))

    def _end(self) -> bool:
        """Stop renewing; False if the lease was already released."""
        if self._released:
            return False
        self._released = True
        if self.backend is not None:
            _renewer().discard(self)
        return True

    def queue_settle(self, pipe, actual_tokens: int, cost: int) -> bool:
        """Queue the settlement on `pipe` when Redis holds the lease; False if it is not queued
        (already settled, or another backend: then call `settle`)."""
        if not isinstance(self.backend, RedisAdmission) or self._released:
            return False
        self._end()
        self.backend.queue_settle(
            pipe, self.subject, self.lease_id, self.reserved, actual_tokens, cost
        )
        return True

    async def settle(self, actual_tokens: int, cost: int, *, again: bool = False) -> None:
        """Settle (idempotent); `again` retries a queued settlement Redis could not run."""
        if not self._end() and not again:
            return
        if self.backend is None:
            return
        try:
            await self.backend.settle(
                self.subject, self.lease_id, self.reserved, actual_tokens, cost
            )
        except Exception:
            metrics.ADMISSION_BACKEND_ERRORS.labels(outcome="release_failed").inc()
            logger.exception(
                "settling a lease failed for tenant %s; it will expire", self.tenant_id
            )


def _limits(caller: Authenticated) -> tuple[Limits, ...]:
    tenant, key = caller.tenant, caller.api_key
    limits = [
        Limits(
            max_concurrent=tenant.max_concurrent_requests,
            tokens_per_minute=tenant.max_tokens_per_minute,
            requests_per_minute=tenant.max_requests_per_minute,
            budget_picos=None if tenant.monthly_budget is None else to_picos(tenant.monthly_budget),
        )
    ]
    if key.limits.counted:
        own = key.limits
        limits.append(
            Limits(
                max_concurrent=own.max_concurrent_requests,
                tokens_per_minute=own.max_tokens_per_minute,
                requests_per_minute=own.max_requests_per_minute,
                budget_picos=None if own.monthly_budget is None else to_picos(own.monthly_budget),
            )
        )
    return tuple(limits)


def _holds_cost(caller: Authenticated) -> bool:
    """Whether anything limits this request's cost (only then is a price looked up)."""
    return (
        caller.tenant.monthly_budget is not None
        or caller.tenant.prepaid
        or caller.api_key.limits.monthly_budget is not None
    )


async def acquire(
    *, caller: Authenticated, lease_id: str, request: InferenceRequest, model_id: str
) -> tuple[Lease, Decision | None]:
    """Admit a request under its tenant's and key's limits, holding its largest possible cost
    when a budget or credits limit it; or raise RateLimited (429, with the decision on the
    error for the rate-limit headers) or AdmissionUnavailable (503)."""
    tenant, key = caller.tenant, caller.api_key
    subject = Subject(
        tenant_id=tenant.pk,
        key_id=key.pk if key.limits.counted else None,
        prepaid=tenant.prepaid,
    )
    limits = _limits(caller)
    tokens = request.reservation()
    price = await aprice_now(tenant.pk, model_id)
    hold = 0
    if _holds_cost(caller):
        prompt, completion = request.most_prompt_tokens(), request.most_completion_tokens()
        # The most it can cost: every prompt token at the higher of the input and cached prices.
        hold = to_picos(max(usage_amount(prompt, completion, price),
                            usage_amount(prompt, completion, price, prompt)))  # fmt: skip
    chosen = backend()
    if chosen is _local and hold:
        await _embedded_counters.ensure(tenant.pk)
    try:
        decision = await chosen.admit(subject, lease_id, limits, tokens, hold)
    except (RedisError, OSError) as error:
        if settings.ADMISSION_FAIL_OPEN:
            metrics.ADMISSION_BACKEND_ERRORS.labels(outcome="admitted").inc()
            logger.error("admission backend unreachable (%s): admitting without limits", error)
            lease = Lease(
                backend=None,
                subject=subject,
                lease_id=lease_id,
                tokens=tokens,
                price=price,
                hold=hold,
            )
            return lease, None
        metrics.ADMISSION_BACKEND_ERRORS.labels(outcome="refused").inc()
        logger.error("admission backend unreachable (%s): refusing", error)
        raise AdmissionUnavailable(
            "The rate limiter is unavailable, so the request was not admitted. Retry shortly."
        ) from None
    if not decision.admitted:
        raise _refusal(decision, caller, limits, tokens, hold)
    lease = Lease(
        backend=chosen, subject=subject, lease_id=lease_id, tokens=tokens, price=price, hold=hold
    )
    return lease, decision


def _refusal(decision: Decision, caller, limits, tokens: int, hold: int) -> RateLimited:
    metrics.REFUSALS.labels(reason=decision.reason).inc()
    count_refusal(decision.reason)
    scope = limits[1 if decision.scope == "key" else 0]
    budget = (
        caller.api_key.limits.monthly_budget
        if decision.scope == "key"
        else (caller.tenant.monthly_budget)
    )
    message = _REFUSAL_MESSAGES[decision.reason].format(
        whose=_WHOSE[decision.scope],
        max_concurrent=scope.max_concurrent,
        rpm=scope.requests_per_minute,
        tpm=scope.tokens_per_minute,
        used=decision.usage[1 if decision.scope == "key" else 0].tokens_used,
        tokens=tokens,
        budget=budget,
        hold=from_picos(hold).normalize(),
        currency=settings.BILLING_CURRENCY,
    )
    if decision.reason in ("budget", "credits"):
        retry = seconds_to_next_month() if decision.reason == "budget" else 3600
        error = RateLimited(message, retry_after=retry, code="insufficient_quota")
        error.error_type = "insufficient_quota"
    else:
        error = RateLimited(message, retry_after=math.ceil(decision.retry_after))
    error.decision = decision
    error.limited_by = decision.scope
    return error


def _duration(seconds: float) -> str:
    """OpenAI's reset format: `1m30s`, `12s`, `250ms`."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def rate_limit_headers(caller: Authenticated, decision: Decision | None) -> list[tuple[str, str]]:
    """The x-ratelimit-* headers OpenAI sends, for the tighter of the tenant's and the key's
    limits; remaining and reset when admission ran."""
    scopes = _limits(caller)
    usage = decision.usage if decision is not None else ()
    tokens = [
        (s.tokens_per_minute, usage[i] if i < len(usage) else None)
        for i, s in enumerate(scopes)
        if s.tokens_per_minute
    ]
    requests = [
        (s.requests_per_minute, usage[i] if i < len(usage) else None)
        for i, s in enumerate(scopes)
        if s.requests_per_minute
    ]
    headers = []
    if tokens:
        limit = min(limit for limit, _u in tokens)
        headers.append(("x-ratelimit-limit-tokens", str(limit)))
        if decision is not None:
            remaining, reset = min(
                (max(0, limit - u.tokens_used), u.reset_tokens) for limit, u in tokens if u
            )
            headers.append(("x-ratelimit-remaining-tokens", str(remaining)))
            headers.append(("x-ratelimit-reset-tokens", _duration(reset)))
    if requests:
        headers.append(("x-ratelimit-limit-requests", str(min(lim for lim, _u in requests))))
        if decision is not None:
            remaining = min(max(0, lim - u.requests_used) for lim, u in requests if u)
            headers.append(("x-ratelimit-remaining-requests", str(remaining)))
    return headers
