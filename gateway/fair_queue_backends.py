"""The fair queue's two backends, one contract: Redis (gateway.fair_queue_lua, one script a
decision, shared by every gateway process) and the in-process twin of the embedded default.

Both keep, per model: the requests holding an engine slot (each with a lease), the waiting
requests (each with a lease, renewed by its polls), and the start-time fair queuing tags of
the tenants with waiters (see gateway.fair_queue_lua for the algorithm and why).
"""

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Protocol

from gateway.fair_queue_lua import DEPTH, ENTER, POLL, RELEASE, RENEW
from models_mgmt.live import live_state
from saas_platform.redis_clients import async_client, sync_client

PRIORITIES = {"high": 0, "normal": 1, "low": 2}


@dataclass(frozen=True)
class Capacity:
    """A model's engine slots: `per_replica` for each ready replica when `replicated` (a
    `process` model), else `per_replica` at its one endpoint."""

    per_replica: int
    replicated: bool


@dataclass(frozen=True)
class Answer:
    # 1 granted, 0 waiting, -1 the tenant's queue is full, -2 the entry expired.
    code: int
    ahead: int  # the tenant's own requests ahead of this one
    granted: list[str] = field(default_factory=list)  # every waiter granted by this call


class FairQueueBackend(Protocol):
    async def enter(self, model_id: str, waiter_id: str, *, tenant_id: int, weight: int,
                    priority: str, max_queued: int, capacity: Capacity,
                    lease_ms: int) -> Answer: ...  # fmt: skip

    async def poll(self, model_id: str, waiter_id: str, *, capacity: Capacity,
                   lease_ms: int) -> Answer: ...  # fmt: skip

    async def release(self, model_id: str, waiter_id: str, *, capacity: Capacity,
                      lease_ms: int) -> list[str]: ...  # fmt: skip

    async def renew(self, model_id: str, waiter_id: str, *, lease_ms: int) -> bool: ...


def _keys(model_id: str) -> list[str]:
    tag = f"{{{model_id}}}"
    route = f"live:{tag}:route"  # models_mgmt.live's routing table, on the same slot
    names = ("slots", "wait", "who", "wexp", "tags", "fin", "wt", "meta")
    return [route, *(f"fq:{tag}:{name}" for name in names)]


def _answer(result) -> Answer:
    code, ahead, *granted = result
    return Answer(int(code), int(ahead), [_text(g) for g in granted])


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisFairQueue:
    def __init__(self, url: str):
        self.url = url
        self.client = async_client(url)
        self._enter = self.client.register_script(ENTER)
        self._poll = self.client.register_script(POLL)
        self._release = self.client.register_script(RELEASE)
        self._renew = self.client.register_script(RENEW)

    async def enter(self, model_id, waiter_id, *, tenant_id, weight, priority, max_queued,
                    capacity, lease_ms) -> Answer:  # fmt: skip
        args = [waiter_id, tenant_id, weight, PRIORITIES[priority], max_queued,
                capacity.per_replica, int(capacity.replicated), lease_ms]  # fmt: skip
        return _answer(await self._enter(keys=_keys(model_id), args=args))

    async def poll(self, model_id, waiter_id, *, capacity, lease_ms) -> Answer:
        args = [waiter_id, capacity.per_replica, int(capacity.replicated), lease_ms]
        return _answer(await self._poll(keys=_keys(model_id), args=args))

    async def release(self, model_id, waiter_id, *, capacity, lease_ms) -> list[str]:
        args = [waiter_id, capacity.per_replica, int(capacity.replicated), lease_ms]
        _held, *granted = await self._release(keys=_keys(model_id), args=args)
        return [_text(g) for g in granted]

    def queue_release(self, pipe, model_id, waiter_id, *, capacity, lease_ms) -> None:
        """`release`, queued on the pipeline that finishes a request (execute_command: a
        cluster's pipeline refuses evalsha() itself). NOSCRIPT: the caller calls `release`."""
        keys = _keys(model_id)
        pipe.execute_command("EVALSHA", self._release.sha, len(keys), *keys, waiter_id,
                             capacity.per_replica, int(capacity.replicated), lease_ms)  # fmt: skip

    async def renew(self, model_id, waiter_id, *, lease_ms) -> bool:
        return bool(await self._renew(keys=_keys(model_id), args=[waiter_id, lease_ms]))

    def queue_renew(self, pipe, model_id, waiter_id, *, lease_ms) -> None:
        keys = _keys(model_id)
        pipe.execute_command("EVALSHA", self._renew.sha, len(keys), *keys, waiter_id, lease_ms)


@dataclass(frozen=True)
class QueueStats:
    waiting: dict[str, int]  # tenant id -> requests waiting now
    served: int  # requests that went through the queue so far
    wait_ms: int  # their total wait


def redis_stats(url: str, model_id: str) -> QueueStats:
    """The model's queue now (blocking: for /metrics and the admin, not the gateway)."""
    client = sync_client(url)
    served, wait_ms, *flat = client.eval(DEPTH, len(_keys(model_id)), *_keys(model_id))
    waiting = {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
    return QueueStats(waiting=waiting, served=int(served), wait_ms=int(wait_ms))


def redis_depth(url: str, model_id: str) -> dict[str, int]:
    """Waiting requests per tenant id."""
    return redis_stats(url, model_id).waiting


@dataclass
class _Model:
    slots: dict[str, float] = field(default_factory=dict)  # holder -> expiry
    # waiter -> [tenant, priority, seq, expiry, since]; ordered per tenant by (priority, seq)
    waiting: dict[str, list] = field(default_factory=dict)
    tags: dict[str, float] = field(default_factory=dict)  # tenants with waiters
    finish: dict[str, float] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    virtual: float = 0.0
    seq: int = 0
    served: int = 0
    wait_ms: int = 0


class LocalFairQueue:
    """The embedded default: the same algorithm in process memory, for one server process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}

    def _state(self, model_id: str) -> _Model:
        return self._models.setdefault(model_id, _Model())

    @staticmethod
    def _tenant_waiters(state: _Model, tenant: str) -> list[str]:
        mine = [w for w, entry in state.waiting.items() if entry[0] == tenant]
        return sorted(mine, key=lambda w: (state.waiting[w][1], state.waiting[w][2]))

    def _remove_waiter(self, state: _Model, waiter_id: str) -> bool:
        entry = state.waiting.pop(waiter_id, None)
        if entry is None:
            return False
        if not self._tenant_waiters(state, entry[0]):
            state.tags.pop(entry[0], None)
        return True

    def _expire(self, state: _Model, now: float) -> None:
        for waiter_id in [w for w, entry in state.waiting.items() if entry[3] <= now]:
            self._remove_waiter(state, waiter_id)
        for holder in [h for h, expiry in state.slots.items() if expiry <= now]:
            del state.slots[holder]

    @staticmethod
    def _capacity(model_id: str, capacity: Capacity) -> int:
        replicas = max(1, len(live_state().endpoints(model_id))) if capacity.replicated else 1
        return capacity.per_replica * replicas

    def _dispatch(self, model_id, state: _Model, capacity: Capacity, now, lease_s) -> list[str]:
        free = self._capacity(model_id, capacity) - len(state.slots)
        granted = []
        while free > 0 and state.tags:
            tenant = min(state.tags, key=lambda t: (state.tags[t], t))  # ties by name, as Redis
            start = state.tags[tenant]
            head = self._tenant_waiters(state, tenant)[0]
            state.served += 1
            state.wait_ms += int((now - state.waiting.pop(head)[4]) * 1000)
            state.slots[head] = now + lease_s
            finish = start + 1 / state.weights.get(tenant, 1)
            state.virtual, state.finish[tenant] = start, finish
            if self._tenant_waiters(state, tenant):
                state.tags[tenant] = finish
            else:
                del state.tags[tenant]
            granted.append(head)
            free -= 1
        return granted

    async def enter(self, model_id, waiter_id, *, tenant_id, weight, priority, max_queued,
                    capacity, lease_ms) -> Answer:  # fmt: skip
        now, lease_s, tenant = time.time(), lease_ms / 1000, str(tenant_id)
        with self._lock:
            state = self._state(model_id)
            self._expire(state, now)
            ahead = len(self._tenant_waiters(state, tenant))
            if ahead >= max_queued:
                granted = self._dispatch(model_id, state, capacity, now, lease_s)
                if state.waiting or len(state.slots) >= self._capacity(model_id, capacity):
                    return Answer(-1, ahead, granted)
            state.seq += 1
            entry = [tenant, PRIORITIES[priority], state.seq, now + lease_s, now]
            state.waiting[waiter_id] = entry
            state.weights[tenant] = weight
            if tenant not in state.tags:
                state.tags[tenant] = max(state.virtual, state.finish.get(tenant, 0.0))
            granted = self._dispatch(model_id, state, capacity, now, lease_s)
            return Answer(1 if waiter_id in state.slots else 0, ahead, granted)

    async def poll(self, model_id, waiter_id, *, capacity, lease_ms) -> Answer:
        now, lease_s = time.time(), lease_ms / 1000
        with self._lock:
            state = self._state(model_id)
            self._expire(state, now)
            granted = self._dispatch(model_id, state, capacity, now, lease_s)
            if waiter_id in state.slots:
                return Answer(1, 0, granted)
            entry = state.waiting.get(waiter_id)
            if entry is None:
                return Answer(-2, 0, granted)
            entry[3] = now + lease_s
            ahead = self._tenant_waiters(state, entry[0]).index(waiter_id)
            return Answer(0, ahead, granted)

    async def release(self, model_id, waiter_id, *, capacity, lease_ms) -> list[str]:
        now = time.time()
        with self._lock:
            state = self._state(model_id)
            self._remove_waiter(state, waiter_id)
            state.slots.pop(waiter_id, None)
            self._expire(state, now)
            return self._dispatch(model_id, state, capacity, now, lease_ms / 1000)

    async def renew(self, model_id, waiter_id, *, lease_ms) -> bool:
        now = time.time()
        with self._lock:
            state = self._state(model_id)
            if state.slots.get(waiter_id, 0) <= now:
                return False
            state.slots[waiter_id] = now + lease_ms / 1000
            return True

    def stats(self, model_id: str) -> QueueStats:
        with self._lock:
            state = self._state(model_id)
            self._expire(state, time.time())
            counts: dict[str, int] = {}
            for entry in state.waiting.values():
                counts[entry[0]] = counts.get(entry[0], 0) + 1
            return QueueStats(waiting=counts, served=state.served, wait_ms=state.wait_ms)


_backends: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisFairQueue]" = (
    weakref.WeakKeyDictionary()
)
local_queue = LocalFairQueue()


def backend(redis_url: str) -> FairQueueBackend:
    """The process's backend: a Redis client belongs to the event loop it was made in."""
    if not redis_url:
        return local_queue
    loop = asyncio.get_running_loop()
    if loop not in _backends:
        _backends[loop] = RedisFairQueue(redis_url)
    return _backends[loop]
