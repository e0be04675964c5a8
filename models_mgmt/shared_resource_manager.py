"""The ResourceManager with its state in Redis, shared by every process that names the node.

Each operation takes the node's Redis lock, loads the state, applies the very same logic as the
in-process manager, stores the state back and releases the lock: atomic across processes and
machines. Evict callbacks run after the lock is released, so they may call back in. A waiting
load polls (room is made by other processes, which cannot wake this one), and the waiters are
counted in Redis so the bound holds across processes. Times are wall-clock seconds by default,
since processes on different machines share them.
"""

import json
import time
from contextlib import contextmanager

from models_mgmt.resource_manager import (
    CapacityError,
    ModelDrainingError,
    ModelInfo,
    ResourceManager,
    _Entry,
)
from saas_platform.redis_clients import sync_client

POLL_SECONDS = 0.05
LOCK_SECONDS = 30


class SharedResourceManager(ResourceManager):
    def __init__(self, budget_bytes: int, *, name: str, redis_url: str, **options):
        options.setdefault("clock", time.time)
        super().__init__(budget_bytes, **options)
        self._client = sync_client(redis_url)
        tag = f"rm:{{{name}}}"  # one slot on a cluster, though no script spans the keys
        self._state_key, self._lock_key, self._waiters_key = (
            f"{tag}:state", f"{tag}:lock", f"{tag}:waiters"
        )  # fmt: skip
        self._deferred: list[str] | None = None

    # --- The state in Redis -----------------------------------------------------------------

    def _snapshot(self) -> str:
        models = [[model_id, e.vram_bytes, e.loaded_at, e.last_used, e.generation,
                   e.in_flight, e.pinned, e.drain_started]
                  for model_id, e in self._models.items()]  # fmt: skip
        return json.dumps({"used": self._used, "generation": self._generation, "models": models})

    def _restore(self, raw: bytes | None) -> None:
        state = json.loads(raw) if raw else {"used": 0, "generation": 0, "models": []}
        self._models.clear()
        for model_id, vram, loaded, used, generation, in_flight, pinned, drain in state["models"]:
            self._models[model_id] = _Entry(vram, loaded, used, generation, in_flight, pinned,
                                            drain)  # fmt: skip
        self._used, self._generation = state["used"], state["generation"]

    def _notify_evicted(self, victims: list[str]) -> None:
        if self._deferred is not None:  # inside the Redis lock: run them once it is released
            self._deferred.extend(victims)
            return
        super()._notify_evicted(victims)

    @contextmanager
    def _shared(self):
        lock = self._client.lock(self._lock_key, timeout=LOCK_SECONDS,
                                 blocking_timeout=LOCK_SECONDS)  # fmt: skip
        if not lock.acquire():
            raise CapacityError("the node's state is locked by another process")
        self._deferred = []
        try:
            self._restore(self._client.get(self._state_key))
            try:
                yield
            finally:
                self._client.set(self._state_key, self._snapshot())
        finally:
            deferred, self._deferred = self._deferred, None
            lock.release()
        super()._notify_evicted(deferred)

    # --- The manager's operations, each atomic across processes ------------------------------

    def load(self, model_id, vram_bytes, *, pin=False, wait_seconds=0.0) -> list[str]:
        deadline = time.monotonic() + wait_seconds
        waiting = False
        try:
            while True:
                try:
                    with self._shared():
                        return super().load(model_id, vram_bytes, pin=pin)
                except (CapacityError, ModelDrainingError):
                    if time.monotonic() >= deadline:
                        raise
                    if not waiting:
                        waiting = True
                        if self._client.incr(self._waiters_key) > self._max_waiters:
                            raise CapacityError("too many loads are waiting for room") from None
                    time.sleep(POLL_SECONDS)
        finally:
            if waiting:
                self._client.decr(self._waiters_key)

    def evict(self, model_id: str) -> bool:
        with self._shared():
            return super().evict(model_id)

    def force_expired_drains(self) -> list[str]:
        with self._shared():
            return super().force_expired_drains()

    def touch(self, model_id: str) -> None:
        with self._shared():
            super().touch(model_id)

    def begin_request(self, model_id: str) -> int:
        with self._shared():
            return super().begin_request(model_id)

    def end_request(self, model_id: str, generation: int | None = None) -> None:
        with self._shared():
            super().end_request(model_id, generation)

    def pin(self, model_id: str) -> None:
        with self._shared():
            super().pin(model_id)

    def unpin(self, model_id: str) -> None:
        with self._shared():
            super().unpin(model_id)

    def loaded_models(self) -> list[ModelInfo]:
        with self._shared():
            return super().loaded_models()

    def stats(self) -> tuple[int, int, int]:
        with self._shared():
            return super().stats()

    @property
    def waiting(self) -> int:
        return int(self._client.get(self._waiters_key) or 0)
