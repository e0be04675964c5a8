"""VRAM bookkeeping for the models loaded on one GPU node, with least-recently-used eviction.

`ResourceManager` only does the accounting: it decides which models may stay resident within
a byte budget and tells its evict callback which ones to unload. It loads nothing itself.

Policies, in one place:

* Victims. Only *evictable* models are ever victims: ready (not draining), not pinned, no
  request in flight. A load that does not fit frees the missing bytes with the fewest victims;
  among victim sets of that size it takes the one whose most recently used member is least
  recently used, then compares the second most recently used member, and so on. Put another
  way, the victims come from the shortest possible least-recently-used prefix of the evictable
  models. With one victim this is the least recently used model that is big enough alone.
* Anti-thrash. A model loaded less than `min_residency_seconds` ago is a victim only when the
  older evictable models together cannot free enough bytes; then the rule above runs over all
  evictable models, young ones included.
* Draining. An explicit `evict` of a model with requests in flight marks it draining: it takes
  no new requests, its bytes still count as used, and it is unloaded when its last request ends.
* Drain timeout. A drain older than `drain_timeout_seconds` is unloaded by
  `force_expired_drains()` (nothing runs it automatically: call it from a periodic tick). Its
  outstanding requests are then abandoned: the caller must already have stopped them.
* Capacity. A load that cannot fit even after evicting every evictable model raises
  `CapacityError`, or waits up to `wait_seconds` for room, at most `max_waiters` loads at once.
  `used <= budget` holds at all times.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

READY = "ready"
DRAINING = "draining"
# What a 503 should put in Retry-After: room appears when a request ends, which is usually soon.
RETRY_AFTER_SECONDS = 1


class ResourceManagerError(Exception):
    """Base class of every error the resource manager raises."""


class ModelTooLargeError(ResourceManagerError):
    """The model alone needs more VRAM than the whole budget."""


class ModelNotLoadedError(ResourceManagerError):
    """The model is not loaded on this node."""


class ModelDrainingError(ResourceManagerError):
    """The model is being unloaded and takes no new requests."""


class ModelPinnedError(ResourceManagerError):
    """The model is pinned, so it cannot be evicted."""


class NoRequestInFlightError(ResourceManagerError):
    """`end_request` was called for a model with no request in flight."""


class CapacityError(ResourceManagerError):
    """No room can be made now; `retry_after` is the seconds to put in a 503's Retry-After."""

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ModelInfo:
    """A snapshot of one loaded model."""

    model_id: str
    vram_bytes: int
    loaded_at: float
    last_used: float
    in_flight: int
    pinned: bool
    state: str  # READY or DRAINING


@dataclass
class _Entry:
    vram_bytes: int
    loaded_at: float
    last_used: float
    generation: int  # tells this residency apart from a later reload of the same model
    in_flight: int = 0
    pinned: bool = False
    drain_started: float | None = None  # set while draining

    @property
    def evictable(self) -> bool:
        return self.in_flight == 0 and not self.pinned and self.drain_started is None


class ResourceManager:
    """Tracks the models resident on one GPU node within a VRAM budget (see the module doc).

    Thread-safe: one condition variable guards the state and wakes waiting loads. The evict
    callback runs after the state changed and outside the lock, so it may call back in.
    `clock` stamps `loaded_at`, `last_used` and drains; waiting loads time out on real time.
    """

    def __init__(
        self,
        budget_bytes: int,
        *,
        min_residency_seconds: float = 0.0,
        drain_timeout_seconds: float = 30.0,
        max_waiters: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive")
        if min_residency_seconds < 0 or drain_timeout_seconds < 0 or max_waiters < 0:
            raise ValueError("min_residency_seconds, drain_timeout_seconds and max_waiters >= 0")
        self._budget = budget_bytes
        self._min_residency = min_residency_seconds
        self._drain_timeout = drain_timeout_seconds
        self._max_waiters = max_waiters
        self._clock = clock
        # A plain Lock, not an RLock: re-entering from a callback under the lock would be a bug.
        self._cond = threading.Condition(threading.Lock())
        self._models: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._used = 0
        self._generation = 0
        self._waiters = 0
        self._on_evict: Callable[[str], object] | None = None

    # --- Loading and evicting -------------------------------------------------------------

    def load(
        self, model_id: str, vram_bytes: int, *, pin: bool = False, wait_seconds: float = 0.0
    ) -> list[str]:
        """Register a model as resident and return the models evicted to make room for it.

        A model already loaded is only touched (and pinned if `pin`); its recorded size stays.
        Raises ModelTooLargeError if it exceeds the whole budget, ModelDrainingError if it is
        being unloaded, CapacityError if no room can be made. With `wait_seconds > 0` the last
        two wait for room (a request ending, a drain completing, an unpin) until time runs out.
        """
        if vram_bytes <= 0:
            raise ValueError("vram_bytes must be positive")
        with self._cond:
            victims = self._load_or_wait(model_id, vram_bytes, pin, wait_seconds)
        self._notify_evicted(victims)
        return victims

    def evict(self, model_id: str) -> bool:
        """Unload a model now and return True, or, if requests are in flight, mark it draining
        and return False; it is then unloaded when its last request ends. Evicting a draining
        model again does nothing. Raises ModelNotLoadedError or ModelPinnedError."""
        with self._cond:
            entry = self._entry(model_id)
            if entry.pinned:
                raise ModelPinnedError(f"model {model_id!r} is pinned")
            if entry.drain_started is not None:
                return False
            if entry.in_flight:
                entry.drain_started = self._clock()
                return False
            self._unload(model_id)
        self._notify_evicted([model_id])
        return True

    def force_expired_drains(self) -> list[str]:
        """Unload every model that has drained for at least `drain_timeout_seconds`, and return
        them. Their requests still in flight are abandoned: a later `end_request` for them that
        passes the generation from `begin_request` is ignored, one without it raises
        ModelNotLoadedError (or, after a reload, would count against the new residency)."""
        with self._cond:
            now = self._clock()
            expired = [
                model_id
                for model_id, entry in self._models.items()
                if entry.drain_started is not None
                and now - entry.drain_started >= self._drain_timeout
            ]
            for model_id in expired:
                self._unload(model_id)
        self._notify_evicted(expired)
        return expired

    # --- Requests, recency and pins -------------------------------------------------------

    def touch(self, model_id: str) -> None:
        """Mark a model as just used. Raises ModelNotLoadedError or ModelDrainingError."""
        with self._cond:
            self._touch(model_id, self._ready_entry(model_id))

    def begin_request(self, model_id: str) -> int:
        """Touch a model and count one more request in flight on it, which keeps it resident.

        Returns the model's load generation, to pass to `end_request`. Raises
        ModelNotLoadedError, or ModelDrainingError if it is being unloaded.
        """
        with self._cond:
            entry = self._ready_entry(model_id)
            self._touch(model_id, entry)
            entry.in_flight += 1
            return entry.generation

    def end_request(self, model_id: str, generation: int | None = None) -> None:
        """Count one request fewer in flight; the last one ends a drain (unloading the model).

        With the `generation` that `begin_request` returned, a request whose residency was
        already force-unloaded is ignored instead of counting against a reload. Raises
        ModelNotLoadedError, or NoRequestInFlightError if none is in flight.
        """
        unloaded = []
        with self._cond:
            entry = self._models.get(model_id)
            if generation is not None and (entry is None or entry.generation != generation):
                return
            entry = self._entry(model_id)
            if entry.in_flight == 0:
                raise NoRequestInFlightError(f"model {model_id!r} has no request in flight")
            entry.in_flight -= 1
            if entry.in_flight == 0:
                if entry.drain_started is not None:
                    self._unload(model_id)
                    unloaded.append(model_id)
                self._cond.notify_all()  # it became evictable (or its bytes were freed)
        self._notify_evicted(unloaded)

    def pin(self, model_id: str) -> None:
        """Keep a model resident until `unpin`. Raises ModelNotLoadedError, ModelDrainingError."""
        with self._cond:
            self._ready_entry(model_id).pinned = True

    def unpin(self, model_id: str) -> None:
        """Make a pinned model evictable again. Raises ModelNotLoadedError."""
        with self._cond:
            self._entry(model_id).pinned = False
            self._cond.notify_all()

    # --- Introspection --------------------------------------------------------------------

    def loaded_models(self) -> list[ModelInfo]:
        """A snapshot of the resident models (draining ones included), most recently used
        first."""
        with self._cond:
            return [_info(model_id, entry) for model_id, entry in reversed(self._models.items())]

    def stats(self) -> tuple[int, int, int]:
        """(used bytes, budget bytes, number of models loaded); draining models count."""
        with self._cond:
            return self._used, self._budget, len(self._models)

    @property
    def waiting(self) -> int:
        """How many loads are waiting for room now."""
        with self._cond:
            return self._waiters

    def set_evict_callback(self, fn: Callable[[str], object] | None) -> None:
        """Call `fn(model_id)` once for each model unloaded, outside the lock (None: stop)."""
        with self._cond:
            self._on_evict = fn

    # --- Internals (the caller holds the lock) --------------------------------------------

    def _load_or_wait(
        self, model_id: str, vram_bytes: int, pin: bool, wait_seconds: float
    ) -> list[str]:
        try:
            return self._try_load(model_id, vram_bytes, pin)
        except (CapacityError, ModelDrainingError):
            if wait_seconds <= 0:
                raise
        if self._waiters >= self._max_waiters:
            raise CapacityError(f"{self._waiters} loads are already waiting for VRAM")
        deadline = time.monotonic() + wait_seconds
        self._waiters += 1
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                try:
                    return self._try_load(model_id, vram_bytes, pin)
                except (CapacityError, ModelDrainingError):
                    if time.monotonic() >= deadline:
                        raise
        finally:
            self._waiters -= 1

    def _try_load(self, model_id: str, vram_bytes: int, pin: bool) -> list[str]:
        entry = self._models.get(model_id)
        if entry is not None:
            self._touch(model_id, self._ready_entry(model_id))
            entry.pinned = entry.pinned or pin
            return []
        if vram_bytes > self._budget:
            raise ModelTooLargeError(
                f"model {model_id!r} needs {vram_bytes} bytes, the budget is {self._budget}"
            )
        victims = self._plan_room(model_id, vram_bytes)
        for victim in victims:
            self._unload(victim)
        now = self._clock()
        self._generation += 1
        self._models[model_id] = _Entry(vram_bytes, now, now, self._generation, pinned=pin)
        self._used += vram_bytes
        return victims

    def _plan_room(self, model_id: str, vram_bytes: int) -> list[str]:
        need = self._used + vram_bytes - self._budget
        if need <= 0:
            return []
        now = self._clock()
        evictable = [(mid, e) for mid, e in self._models.items() if e.evictable]
        settled = [(mid, e) for mid, e in evictable if now - e.loaded_at >= self._min_residency]
        for pool in (settled, evictable):  # young models only when the old cannot make room
            if sum(e.vram_bytes for _, e in pool) >= need:
                return choose_victims([(mid, e.vram_bytes) for mid, e in pool], need)
        raise CapacityError(
            f"cannot free {need} bytes for {model_id!r}: the rest is pinned, busy or draining"
        )

    def _entry(self, model_id: str) -> _Entry:
        entry = self._models.get(model_id)
        if entry is None:
            raise ModelNotLoadedError(f"model {model_id!r} is not loaded")
        return entry

    def _ready_entry(self, model_id: str) -> _Entry:
        entry = self._entry(model_id)
        if entry.drain_started is not None:
            raise ModelDrainingError(f"model {model_id!r} is draining")
        return entry

    def _touch(self, model_id: str, entry: _Entry) -> None:
        entry.last_used = self._clock()
        self._models.move_to_end(model_id)

    def _unload(self, model_id: str) -> None:
        self._used -= self._models.pop(model_id).vram_bytes
        self._cond.notify_all()  # bytes were freed: a waiting load may fit now

    def _notify_evicted(self, model_ids: Sequence[str]) -> None:
        callback = self._on_evict
        for model_id in model_ids:
            if callback is None:
                return
            try:
                callback(model_id)
            except Exception:  # the model is gone already; one bad callback must not hide others
                logger.exception("evict callback failed for model %s", model_id)


def _info(model_id: str, entry: _Entry) -> ModelInfo:
    state = READY if entry.drain_started is None else DRAINING
    return ModelInfo(
        model_id,
        entry.vram_bytes,
        entry.loaded_at,
        entry.last_used,
        entry.in_flight,
        entry.pinned,
        state,
    )


def choose_victims(candidates: Sequence[tuple[str, int]], need: int) -> list[str]:
    """Pick the models to evict from `candidates` ((model_id, bytes), least recently used
    first) so that at least `need` bytes are freed; return them least recently used first.

    The fewest victims win. Among sets of that size, the one whose most recently used member
    comes earliest wins, then the second most recently used member decides, and so on. Raises
    ValueError if all the candidates together free less than `need`.
    """
    sizes = [size for _, size in candidates]
    count = _fewest_victims(sizes, need)
    chosen = []
    end = len(sizes)
    while need > 0:
        # The last model of the shortest prefix whose `count` largest cover `need` is in every
        # best set; choosing it leaves a smaller problem of the same kind before it.
        end = _shortest_prefix(sizes, end, count, need)
        chosen.append(candidates[end - 1][0])
        need -= sizes[end - 1]
        count -= 1
        end -= 1
    chosen.reverse()
    return chosen


def _fewest_victims(sizes: Sequence[int], need: int) -> int:
    # No k models free more than the k largest, so the largest-first count is the minimum.
    total = 0
    for count, size in enumerate(sorted(sizes, reverse=True), start=1):
        total += size
        if total >= need:
            return count
    raise ValueError(f"the candidates free {total} bytes, {need} are needed")


def _shortest_prefix(sizes: Sequence[int], limit: int, count: int, need: int) -> int:
    largest: list[int] = []  # min-heap of the `count` largest sizes seen so far
    total = 0
    for index in range(limit):
        if len(largest) < count:
            heapq.heappush(largest, sizes[index])
            total += sizes[index]
        elif sizes[index] > largest[0]:
            total += sizes[index] - heapq.heapreplace(largest, sizes[index])
        if total >= need:
            return index + 1
    raise AssertionError("unreachable: _fewest_victims said the candidates suffice")
