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

from billing.money import to_micros
from billing.spend import spend_get_local, spend_key
from gateway.admission_lua import ADMIT, RELEASE, RENEW
from saas_platform import metrics
from saas_platform.errors import RateLimited, ServiceUnavailable
from saas_platform.periods import month_key, seconds_to_next_month
from saas_platform.redis_clients import async_client
from tenants.refusals import count_refusal

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Limits:
    max_concurrent: int
    tokens_per_minute: int
    requests_per_minute: int | None = None
    budget_micros: int | None = None  # the monthly budget, in millionths of the currency


@dataclass(frozen=True)
class Decision:
    admitted: bool
    # None when admitted; else "concurrency", "requests_per_minute", "tokens_per_minute" or
    # "too_large" (the reservation alone exceeds the per-minute limit: it can never fit).
    reason: str | None
    retry_after: float  # seconds until the request could fit
    in_flight: int
    tokens_used: int
    requests_used: int
    reset_tokens: float  # seconds until the token window is empty again


_REASONS = {
    1: None,
    -1: "concurrency",
    -2: "requests_per_minute",
    -3: "too_large",
    -4: "tokens_per_minute",
    -5: "budget",
}


class AdmissionBackend(Protocol):
    async def admit(
        self, tenant_id: int, lease_id: str, limits: Limits, tokens: int
    ) -> Decision: ...

    async def release(self, tenant_id: int, lease_id: str, reserved: int, actual: int) -> None: ...

    async def renew(self, tenant_id: int, lease_id: str) -> bool: ...

    async def in_flight(self, tenant_id: int) -> int: ...


def _lease_ms() -> int:
    return int(settings.ADMISSION_LEASE_SECONDS * 1000)


class RedisAdmission:
    def __init__(self, url: str):
        self.client = async_client(url)
        self._admit = self.client.register_script(ADMIT)
        self._release = self.client.register_script(RELEASE)
        self._renew = self.client.register_script(RENEW)

    @staticmethod
    def _keys(tenant_id: int) -> list[str]:
        tag = f"adm:{{{tenant_id}}}"
        return [f"{tag}:leases", f"{tag}:tok", f"{tag}:amt", f"{tag}:sum", f"{tag}:req",
                spend_key(tenant_id, month_key())]  # fmt: skip

    async def admit(self, tenant_id, lease_id, limits, tokens) -> Decision:
        code, in_flight, used, requests, retry_ms, reset_ms = await self._admit(
            keys=self._keys(tenant_id),
            args=[
                lease_id,
                _lease_ms(),
                limits.max_concurrent,
                limits.tokens_per_minute,
                limits.requests_per_minute or 0,
                tokens,
                -1 if limits.budget_micros is None else limits.budget_micros,
            ],
        )
        return Decision(
            admitted=code == 1,
            reason=_REASONS[int(code)],
            retry_after=int(retry_ms) / 1000,
            in_flight=int(in_flight),
            tokens_used=int(used),
            requests_used=int(requests),
            reset_tokens=int(reset_ms) / 1000,
        )

    async def release(self, tenant_id, lease_id, reserved, actual) -> None:
        await self._release(keys=self._keys(tenant_id), args=[lease_id, reserved, actual])

    def queue_release(self, pipe, tenant_id, lease_id, reserved, actual) -> None:
        """`release`, queued on a pipeline (the one round trip that finishes a request). A
        Redis that lost its script cache answers NOSCRIPT: the caller then calls `release`."""
        # execute_command, not evalsha: a cluster's pipeline refuses evalsha() itself.
        pipe.execute_command("EVALSHA", self._release.sha, 6, *self._keys(tenant_id), lease_id,
                             reserved, actual)  # fmt: skip

    def queue_renew(self, pipe, tenant_id, lease_id) -> None:
        pipe.execute_command("EVALSHA", self._renew.sha, 6, *self._keys(tenant_id), lease_id,
                             _lease_ms())  # fmt: skip

    async def renew(self, tenant_id, lease_id) -> bool:
        return bool(await self._renew(keys=self._keys(tenant_id), args=[lease_id, _lease_ms()]))

    async def in_flight(self, tenant_id) -> int:
        key = self._keys(tenant_id)[0]
        now_ms = int(time.time() * 1000)
        await self.client.zremrangebyscore(key, "-inf", now_ms)
        return int(await self.client.zcard(key))


class _TenantWindow:
    def __init__(self):
        self.leases: dict[str, float] = {}
        self.tokens: deque[list] = deque()  # [admitted_at, entry id, tokens], oldest first
        self.amounts: dict[str, list] = {}
        self.used = 0
        self.requests: deque[float] = deque()


class LocalAdmission:
    """The embedded default: the same algorithm in process memory, for one server process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tenants: dict[int, _TenantWindow] = {}

    def _expire(self, state: _TenantWindow, now: float) -> None:
        while state.tokens and state.tokens[0][0] <= now - WINDOW_SECONDS:
            _at, entry_id, amount = state.tokens.popleft()
            state.amounts.pop(entry_id, None)
            state.used -= amount
        while state.requests and state.requests[0] <= now - WINDOW_SECONDS:
            state.requests.popleft()
        for lease_id in [lid for lid, expiry in state.leases.items() if expiry <= now]:
            del state.leases[lease_id]

    @staticmethod
    def _reset(state: _TenantWindow, now: float) -> float:
        return state.tokens[-1][0] + WINDOW_SECONDS - now if state.tokens else 0.0

    async def admit(self, tenant_id, lease_id, limits, tokens) -> Decision:
        now = time.time()
        with self._lock:
            state = self._tenants.setdefault(tenant_id, _TenantWindow())
            self._expire(state, now)
            counts = (len(state.leases), state.used, len(state.requests))

            def refuse(reason: str, retry: float) -> Decision:
                return Decision(False, reason, retry, *counts, self._reset(state, now))

            budget = limits.budget_micros
            if budget is not None and spend_get_local(tenant_id, month_key()) >= budget:
                return refuse("budget", 0.0)
            if tokens > limits.tokens_per_minute:
                return refuse("too_large", WINDOW_SECONDS)
            if len(state.leases) >= limits.max_concurrent:
                return refuse("concurrency", 1.0)
            rpm = limits.requests_per_minute
            if rpm and len(state.requests) >= rpm:
                return refuse("requests_per_minute", state.requests[0] + WINDOW_SECONDS - now)
            if state.used + tokens > limits.tokens_per_minute:
                freed, wait = 0, float(WINDOW_SECONDS)
                for admitted_at, _entry, amount in state.tokens:
                    freed += amount
                    if state.used - freed + tokens <= limits.tokens_per_minute:
                        wait = admitted_at + WINDOW_SECONDS - now
                        break
                return refuse("tokens_per_minute", wait)
            state.leases[lease_id] = now + settings.ADMISSION_LEASE_SECONDS
            entry = [now, lease_id, tokens]
            state.tokens.append(entry)
            state.amounts[lease_id] = entry
            state.used += tokens
            if rpm:
                state.requests.append(now)
            return Decision(
                True, None, 0.0, counts[0] + 1, state.used, counts[2] + 1, WINDOW_SECONDS
            )

    async def release(self, tenant_id, lease_id, reserved, actual) -> None:
        now = time.time()
        with self._lock:
            state = self._tenants.setdefault(tenant_id, _TenantWindow())
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

    async def renew(self, tenant_id, lease_id) -> bool:
        now = time.time()
        with self._lock:
            state = self._tenants.setdefault(tenant_id, _TenantWindow())
            if state.leases.get(lease_id, 0) <= now:
                return False
            state.leases[lease_id] = now + settings.ADMISSION_LEASE_SECONDS
            return True

    async def in_flight(self, tenant_id) -> int:
        with self._lock:
            state = self._tenants.setdefault(tenant_id, _TenantWindow())
            self._expire(state, time.time())
            return len(state.leases)


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
    "concurrency": "Too many concurrent requests for this tenant (limit {max_concurrent}). "
    "Retry when one of them has finished.",
    "requests_per_minute": "Rate limit reached for requests per minute (limit {rpm}).",
    "tokens_per_minute": "Rate limit reached for tokens per minute (limit {tpm}, in use {used}, "
    "requested {tokens}).",
    "budget": "You exceeded your monthly budget of {budget} {currency}. Requests are refused "
    "until next month or until the budget is raised.",
    "too_large": "Request too large: it reserves {tokens} tokens (estimated prompt plus "
    "max_tokens) but the tenant's limit is {tpm} tokens per minute, so it can never be "
    "admitted. Lower max_tokens or shorten the prompt.",
}


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
                lease.backend.queue_renew(pipe, lease.tenant_id, lease.lease_id)
            results = await pipe.execute(raise_on_error=False)
            if any(isinstance(result, NoScriptError) for result in results):
                for lease in batched:  # Redis lost its scripts: one by one, loading it again
                    await lease.backend.renew(lease.tenant_id, lease.lease_id)
        for lease in leases:
            if not isinstance(lease.backend, RedisAdmission):
                await lease.backend.renew(lease.tenant_id, lease.lease_id)


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
    """An admitted request's hold on its tenant's limits, renewed while it runs. `release`
    reconciles the reservation to the real count; it is idempotent and never raises."""

    def __init__(
        self, *, backend: AdmissionBackend | None, tenant_id: int, lease_id: str, tokens: int
    ):
        self.backend = backend
        self.tenant_id = tenant_id
        self.lease_id = lease_id
        self.reserved = tokens
        # No request holds its lease past this (event-loop time): the renewer stops renewing
        # it, so a response that never ends frees its slot by itself.
        self.deadline = asyncio.get_running_loop().time() + settings.UPSTREAM_TOTAL_TIMEOUT
        self._released = False
        if backend is not None:
            _renewer().add(self)

    def _end(self) -> bool:
        """Stop renewing; False if the lease was already released."""
        if self._released:
            return False
        self._released = True
        if self.backend is not None:
            _renewer().discard(self)
        return True

    def queue_release(self, pipe, actual_tokens: int) -> bool:
        """Queue the release on `pipe` when Redis holds the lease; False if it is not queued
        (already released, or another backend: then call `release`)."""
        if not isinstance(self.backend, RedisAdmission) or self._released:
            return False
        self._end()
        self.backend.queue_release(
            pipe, self.tenant_id, self.lease_id, self.reserved, actual_tokens
        )
        return True

    async def release(self, actual_tokens: int, *, again: bool = False) -> None:
        """Release (idempotent); `again` retries a queued release that Redis could not run."""
        if not self._end() and not again:
            return
        if self.backend is None:
            return
        try:
            await self.backend.release(self.tenant_id, self.lease_id, self.reserved, actual_tokens)
        except Exception:
            metrics.ADMISSION_BACKEND_ERRORS.labels(outcome="release_failed").inc()
            logger.exception("lease release failed for tenant %s; it will expire", self.tenant_id)


async def acquire(*, tenant, lease_id: str, tokens: int) -> tuple[Lease, Decision | None]:
    """Admit a request of `tenant` reserving `tokens`, or raise RateLimited (429, with the
    decision on the error for the rate-limit headers) or AdmissionUnavailable (503)."""
    limits = Limits(
        max_concurrent=tenant.max_concurrent_requests,
        tokens_per_minute=tenant.max_tokens_per_minute,
        requests_per_minute=tenant.max_requests_per_minute,
        budget_micros=None if tenant.monthly_budget is None else to_micros(tenant.monthly_budget),
    )
    chosen = backend()
    try:
        decision = await chosen.admit(tenant.pk, lease_id, limits, tokens)
    except (RedisError, OSError) as error:
        if settings.ADMISSION_FAIL_OPEN:
            metrics.ADMISSION_BACKEND_ERRORS.labels(outcome="admitted").inc()
            logger.error("admission backend unreachable (%s): admitting without limits", error)
            return Lease(backend=None, tenant_id=tenant.pk, lease_id=lease_id, tokens=tokens), None
        metrics.ADMISSION_BACKEND_ERRORS.labels(outcome="refused").inc()
        logger.error("admission backend unreachable (%s): refusing", error)
        raise AdmissionUnavailable(
            "The rate limiter is unavailable, so the request was not admitted. Retry shortly."
        ) from None
    if not decision.admitted:
        metrics.REFUSALS.labels(reason=decision.reason).inc()
        count_refusal(decision.reason)
        message = _REFUSAL_MESSAGES[decision.reason].format(
            max_concurrent=limits.max_concurrent,
            rpm=limits.requests_per_minute,
            tpm=limits.tokens_per_minute,
            used=decision.tokens_used,
            tokens=tokens,
            budget=tenant.monthly_budget,
            currency=settings.BILLING_CURRENCY,
        )
        if decision.reason == "budget":
            error = RateLimited(message, retry_after=seconds_to_next_month(),
                                code="insufficient_quota")  # fmt: skip
            error.error_type = "insufficient_quota"
        else:
            error = RateLimited(message, retry_after=math.ceil(decision.retry_after))
        error.decision = decision
        raise error
    return Lease(backend=chosen, tenant_id=tenant.pk, lease_id=lease_id, tokens=tokens), decision


def _duration(seconds: float) -> str:
    """OpenAI's reset format: `1m30s`, `12s`, `250ms`."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def rate_limit_headers(tenant, decision: Decision | None) -> list[tuple[str, str]]:
    """The x-ratelimit-* headers OpenAI sends; remaining and reset when admission ran."""
    headers = [("x-ratelimit-limit-tokens", str(tenant.max_tokens_per_minute))]
    rpm = tenant.max_requests_per_minute
    if rpm:
        headers.append(("x-ratelimit-limit-requests", str(rpm)))
    if decision is not None:
        remaining = max(0, tenant.max_tokens_per_minute - decision.tokens_used)
        headers.append(("x-ratelimit-remaining-tokens", str(remaining)))
        headers.append(("x-ratelimit-reset-tokens", _duration(decision.reset_tokens)))
        if rpm:
            headers.append(("x-ratelimit-remaining-requests",
                            str(max(0, rpm - decision.requests_used))))  # fmt: skip
    return headers
