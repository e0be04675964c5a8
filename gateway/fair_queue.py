"""Step 2b: an admitted request for a model whose engines are at capacity waits for a slot in
that model's fair queue, shared by every gateway process, instead of piling up inside the
engine in arrival order.

A model's capacity is `max_concurrent_per_replica` slots for each ready replica (one endpoint
for `openai` and `local` models); unset, requests go straight on. Waiting requests are served
in start-time fair order across tenants, weighted by the tenant's `queue_weight`, and within a
tenant by its key's priority, then arrival (gateway.fair_queue_lua says why that algorithm).

A request waits at most QUEUE_MAX_WAIT_SECONDS (then 503 engine_overloaded, Retry-After), and a
tenant has at most `queue_bound` requests waiting (beyond it, 429 at once). Its place and its
slot are leases: the place is renewed by the waiter's polls, the slot by one renewer task per
process, so a gateway that dies leaves neither behind for longer than ADMISSION_LEASE_SECONDS.
A waiter is woken at once when a request of its own process frees the slot it gets; otherwise
it finds out at its next poll (sooner the nearer it is to the head of its tenant's queue).
"""

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass, field

from django.conf import settings
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import NoScriptError, RedisError

from gateway.fair_queue_backends import (
    Capacity,
    FairQueueBackend,
    QueueStats,
    RedisFairQueue,
    backend,
    local_queue,
    redis_stats,
)
from models_mgmt.models import ServedModel
from models_mgmt.routing import request_scale_out
from saas_platform import metrics
from saas_platform.errors import RateLimited, ServiceUnavailable
from tenants.models import Tenant

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.02  # the head of a tenant's queue; each two requests further back, once more
MAX_POLL_SECONDS = 0.5


class EngineOverloaded(ServiceUnavailable):
    code = "engine_overloaded"


class QueueFull(RateLimited):
    code = "queue_full"


class QueueUnavailable(ServiceUnavailable):
    code = "queue_unavailable"


def _lease_ms() -> int:
    return int(settings.ADMISSION_LEASE_SECONDS * 1000)


def capacity_of(model: ServedModel) -> Capacity | None:
    if not model.max_concurrent_per_replica:
        return None
    replicated = model.engine == ServedModel.Engine.PROCESS
    return Capacity(per_replica=model.max_concurrent_per_replica, replicated=replicated)


# Waiters of this process, woken when a release here grants them their slot.
_waiters: dict[str, asyncio.Event] = {}


def _wake(granted: list[str]) -> None:
    for waiter_id in granted:
        event = _waiters.get(waiter_id)
        if event is not None:
            event.set()


# Strong references to leave/release tasks, so none is garbage-collected half-way.
_pending: set[asyncio.Task] = set()


async def _shielded(coroutine) -> None:
    """Run `coroutine` to its end even if the caller is cancelled (a client that left)."""
    task = asyncio.ensure_future(coroutine)
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    await asyncio.shield(task)


@dataclass
class Slot:
    """An engine slot held by one request until `release` (or `queue_release`), renewed
    meanwhile. `queue_ms` is how long the request waited for it."""

    backend: FairQueueBackend
    model_id: str
    waiter_id: str
    capacity: Capacity
    queue_ms: int
    deadline: float = 0.0  # event-loop time past which it is no longer renewed
    released: bool = field(default=False)

    def _end(self) -> bool:
        if self.released:
            return False
        self.released = True
        _renewer().discard(self)
        return True

    def queue_release(self, pipe) -> bool:
        """Queue the release on `pipe` (the one round trip that finishes a request); False if
        it is not queued there (already released, or the in-process backend)."""
        if not isinstance(self.backend, RedisFairQueue) or self.released:
            return False
        self._end()
        self.backend.queue_release(pipe, self.model_id, self.waiter_id, capacity=self.capacity,
                                   lease_ms=_lease_ms())  # fmt: skip
        return True

    def released_by(self, result) -> None:
        """Take the queued release's answer: wake the waiters it granted."""
        if isinstance(result, list | tuple):
            _wake([value.decode() if isinstance(value, bytes) else str(value)
                   for value in result[1:]])  # fmt: skip

    async def release(self, *, again: bool = False) -> None:
        """Give the slot back (idempotent, never raises); `again` retries a queued release
        that Redis could not run."""
        if not self._end() and not again:
            return
        try:
            granted = await self.backend.release(
                self.model_id, self.waiter_id, capacity=self.capacity, lease_ms=_lease_ms()
            )
        except Exception:
            logger.exception("engine slot release failed for %s; it will expire", self.model_id)
            return
        _wake(granted)


class _Renewer:
    """Renews every held slot of one event loop every third of the lease, in one round trip."""

    def __init__(self):
        self.slots: dict[str, Slot] = {}
        self._task: asyncio.Task | None = None

    def add(self, slot: Slot) -> None:
        self.slots[slot.waiter_id] = slot
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def discard(self, slot: Slot) -> None:
        self.slots.pop(slot.waiter_id, None)

    async def _run(self) -> None:
        try:
            while self.slots:
                await asyncio.sleep(settings.ADMISSION_LEASE_SECONDS / 3)
                now = asyncio.get_running_loop().time()
                for slot in [slot for slot in self.slots.values() if slot.deadline <= now]:
                    self.discard(slot)  # past its request's deadline: left to expire
                try:
                    await self._renew(list(self.slots.values()))
                except Exception:  # noqa: BLE001 - keep renewing through a Redis blip
                    logger.warning("renewing %d engine slots failed", len(self.slots))
        finally:
            self._task = None

    @staticmethod
    async def _renew(slots: list[Slot]) -> None:
        batched = [slot for slot in slots if isinstance(slot.backend, RedisFairQueue)]
        if batched:
            pipe = batched[0].backend.client.pipeline(transaction=False)
            for slot in batched:
                slot.backend.queue_renew(pipe, slot.model_id, slot.waiter_id, lease_ms=_lease_ms())
            results = await pipe.execute(raise_on_error=False)
            if any(isinstance(result, NoScriptError) for result in results):
                for slot in batched:  # Redis lost its scripts: one by one, loading them again
                    await slot.backend.renew(slot.model_id, slot.waiter_id, lease_ms=_lease_ms())
        for slot in slots:
            if not isinstance(slot.backend, RedisFairQueue):
                await slot.backend.renew(slot.model_id, slot.waiter_id, lease_ms=_lease_ms())


_renewers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Renewer]" = (
    weakref.WeakKeyDictionary()
)


def _renewer() -> _Renewer:
    loop = asyncio.get_running_loop()
    renewer = _renewers.get(loop)
    if renewer is None:
        renewer = _renewers[loop] = _Renewer()
    return renewer


async def _wait(queue: FairQueueBackend, model: ServedModel, waiter_id: str, *, tenant: Tenant,
                priority: str, capacity: Capacity) -> None:  # fmt: skip
    """Enter the queue and return once granted a slot; raise QueueFull or EngineOverloaded.
    Having waited SCALE_OUT_AFTER_SECONDS, it asks for another replica of the model."""
    model_id = model.model_id
    lease_ms = _lease_ms()
    started = time.monotonic()
    deadline = started + settings.QUEUE_MAX_WAIT_SECONDS
    asked = False
    event = _waiters[waiter_id] = asyncio.Event()
    answer = await queue.enter(model_id, waiter_id, tenant_id=tenant.pk,
                               weight=tenant.queue_weight, priority=priority,
                               max_queued=tenant.config.queue_bound, capacity=capacity,
                               lease_ms=lease_ms)  # fmt: skip
    _wake(answer.granted)
    if answer.code == -1:
        raise QueueFull(
            f"Too many requests waiting for '{model_id}' for this tenant (limit "
            f"{tenant.config.queue_bound}). Retry when one of them has started.",
            retry_after=1,
        )
    while answer.code == 0:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        interval = min(remaining, POLL_SECONDS * (1 + answer.ahead // 2), MAX_POLL_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), interval)
        event.clear()
        answer = await queue.poll(model_id, waiter_id, capacity=capacity, lease_ms=lease_ms)
        _wake(answer.granted)
        if not asked and time.monotonic() - started >= settings.SCALE_OUT_AFTER_SECONDS:
            asked = True
            await request_scale_out(model)
    if answer.code != 1:  # waited too long, or its place expired (this process stalled)
        waited = time.monotonic() - started
        error = EngineOverloaded(
            f"The model '{model_id}' is at capacity and the request waited {waited:.0f}s "
            "without an engine slot. Retry shortly."
        )
        error.retry_after = max(1, round(settings.QUEUE_MAX_WAIT_SECONDS / 10))
        raise error


async def acquire(*, model: ServedModel, tenant: Tenant, priority: str,
                  request_id: str) -> Slot | None:  # fmt: skip
    """An engine slot for the request, waiting in the model's fair queue while the model is at
    capacity; None when the model has no capacity set (nothing to hold). Raises QueueFull
    (429), EngineOverloaded (503) or QueueUnavailable (503); a cancelled wait (the client left)
    leaves the queue before the cancellation goes on."""
    capacity = capacity_of(model)
    if capacity is None:
        return None
    queue = backend(settings.REDIS_URL)
    started = time.monotonic()
    granted = False
    try:
        await _wait(queue, model, request_id, tenant=tenant, priority=priority,
                    capacity=capacity)  # fmt: skip
        granted = True
    except (RedisError, OSError) as error:
        logger.error("fair queue unreachable (%s): refusing", error)
        raise QueueUnavailable(
            "The engine queue is unavailable, so the request was not served. Retry shortly."
        ) from None
    finally:
        _waiters.pop(request_id, None)
        if not granted:
            await _shielded(_leave(queue, model.model_id, request_id, capacity))
    waited = time.monotonic() - started
    metrics.QUEUE_WAIT.labels(model=model.model_id, tenant=tenant.slug).observe(waited)
    slot = Slot(backend=queue, model_id=model.model_id, waiter_id=request_id, capacity=capacity,
                queue_ms=int(waited * 1000))  # fmt: skip
    slot.deadline = asyncio.get_running_loop().time() + settings.UPSTREAM_TOTAL_TIMEOUT
    _renewer().add(slot)
    return slot


async def _leave(queue: FairQueueBackend, model_id: str, waiter_id: str, capacity) -> None:
    try:
        _wake(await queue.release(model_id, waiter_id, capacity=capacity, lease_ms=_lease_ms()))
    except Exception:
        logger.exception("leaving the queue of %s failed; the entry will expire", model_id)


def _stats(model_id: str) -> QueueStats:
    if settings.REDIS_URL:
        return redis_stats(settings.REDIS_URL, model_id)
    return local_queue.stats(model_id)


def queue_stats(model_ids) -> dict[str, dict]:
    """Model id -> {"waiting": requests waiting now, "served": requests that went through the
    queue, "mean_wait_ms"}: what the admin's model and node pages show (models_mgmt names this
    function in settings, as it imports no gateway code). Blocking."""
    stats = {}
    for model_id in model_ids:
        found = _stats(model_id)
        mean = found.wait_ms / found.served if found.served else 0.0
        stats[model_id] = {"waiting": sum(found.waiting.values()), "served": found.served,
                           "mean_wait_ms": round(mean)}  # fmt: skip
    return stats


def queue_depths() -> dict[tuple[str, str], int]:
    """(model id, tenant slug) -> requests waiting now, for the models that have a capacity.
    Blocking (the database, Redis): for /metrics."""
    models = ServedModel.objects.filter(max_concurrent_per_replica__isnull=False)
    depths: dict[tuple[str, int], int] = {}
    for model_id in models.values_list("model_id", flat=True):
        for tenant_id, count in _stats(model_id).waiting.items():
            depths[(model_id, int(tenant_id))] = count
    slugs = dict(Tenant.objects.filter(pk__in={t for _, t in depths}).values_list("pk", "slug"))
    return {(model, slugs.get(tenant, str(tenant))): n for (model, tenant), n in depths.items()}


def queue_depth_collector():
    """/metrics: gateway_queue_depth{model, tenant}, read at each scrape (the same on every
    server: take `max` across instances)."""
    family = GaugeMetricFamily(
        "gateway_queue_depth", "Requests waiting for a model's engines", labels=["model", "tenant"]
    )
    for (model_id, tenant), count in sorted(queue_depths().items()):
        family.add_metric([model_id, tenant], count)
    yield family
