"""The live state of placements that every process shares: which nodes have a model ready (the
routing table), requests in flight per node and model, and when each was last used.

Gateways route and count requests here without writing PostgreSQL per request; a node's worker
publishes a placement when it is ready, withdraws it before unloading, and reads in-flight counts
and last use to decide what to evict. Redis (one Lua call to route) or, in the embedded default,
process memory behind the same interface.
"""

import asyncio
import threading
import time
import weakref

from django.conf import settings

from saas_platform.redis_clients import async_client, sync_client

# KEYS: route hash, in-flight hash, last-used hash, all tagged with the model (one slot on a
# cluster). ARGV: now (ms).
# Picks the ready node with the fewest requests in flight, counts the request, returns
# {node, endpoint} or {} when no node has the model ready.
_ROUTE = """
local nodes = redis.call('HGETALL', KEYS[1])
local best, best_endpoint, best_load = nil, nil, nil
for i = 1, #nodes, 2 do
  local load = tonumber(redis.call('HGET', KEYS[2], nodes[i]) or '0')
  if best == nil or load < best_load then
    best, best_endpoint, best_load = nodes[i], nodes[i + 1], load
  end
end
if best == nil then return {} end
redis.call('HINCRBY', KEYS[2], best, 1)
redis.call('HSET', KEYS[3], best, ARGV[1])
return {best, best_endpoint}
"""


def _keys(model_id: str) -> list[str]:
    tag = f"live:{{{model_id}}}"
    return [f"{tag}:route", f"{tag}:inflight", f"{tag}:lastused"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class RedisLiveState:
    def __init__(self, url: str):
        self.url = url
        self.client = sync_client(url, decode_responses=True)
        self._async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _aclient(self):
        loop = asyncio.get_running_loop()
        if loop not in self._async:
            client = async_client(self.url, decode_responses=True)
            self._async[loop] = (client, client.register_script(_ROUTE))
        return self._async[loop]

    # The gateway's side (async).
    async def route(self, model_id: str) -> tuple[str, str] | None:
        _client, script = self._aclient()
        found = await script(keys=_keys(model_id), args=[_now_ms()])
        return (found[0], found[1]) if found else None

    async def finished(self, model_id: str, node: str) -> None:
        client, _script = self._aclient()
        await client.hincrby(_keys(model_id)[1], node, -1)

    @staticmethod
    def queue_finished(pipe, model_id: str, node: str) -> None:
        """`finished`, queued on the caller's pipeline (the one round trip that ends a
        request). A pipeline of any Redis client: it needs no script."""
        pipe.hincrby(_keys(model_id)[1], node, -1)

    # The workers' side (sync).
    def publish(self, model_id: str, node: str, endpoint: str) -> None:
        self.client.hset(_keys(model_id)[0], node, endpoint)
        self.client.hsetnx(_keys(model_id)[2], node, _now_ms())

    def withdraw(self, model_id: str, node: str) -> None:
        self.client.hdel(_keys(model_id)[0], node)

    def forget(self, model_id: str, node: str) -> None:
        for key in _keys(model_id):
            self.client.hdel(key, node)

    def in_flight(self, model_id: str, node: str) -> int:
        return max(0, int(self.client.hget(_keys(model_id)[1], node) or 0))

    def last_used_ms(self, model_id: str, node: str) -> int | None:
        value = self.client.hget(_keys(model_id)[2], node)
        return int(value) if value else None

    def endpoints(self, model_id: str) -> dict[str, str]:
        return self.client.hgetall(_keys(model_id)[0])


class LocalLiveState:
    """The embedded default: one process (Celery runs eagerly in it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._routes: dict[str, dict[str, str]] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._last_used: dict[tuple[str, str], int] = {}

    async def route(self, model_id: str) -> tuple[str, str] | None:
        with self._lock:
            nodes = self._routes.get(model_id, {})
            if not nodes:
                return None
            node = min(nodes, key=lambda name: self._in_flight.get((model_id, name), 0))
            self._in_flight[(model_id, node)] = self._in_flight.get((model_id, node), 0) + 1
            self._last_used[(model_id, node)] = _now_ms()
            return node, nodes[node]

    async def finished(self, model_id: str, node: str) -> None:
        with self._lock:
            self._in_flight[(model_id, node)] = self._in_flight.get((model_id, node), 0) - 1

    def publish(self, model_id: str, node: str, endpoint: str) -> None:
        with self._lock:
            self._routes.setdefault(model_id, {})[node] = endpoint
            self._last_used.setdefault((model_id, node), _now_ms())

    def withdraw(self, model_id: str, node: str) -> None:
        with self._lock:
            self._routes.get(model_id, {}).pop(node, None)

    def forget(self, model_id: str, node: str) -> None:
        with self._lock:
            self._routes.get(model_id, {}).pop(node, None)
            self._in_flight.pop((model_id, node), None)
            self._last_used.pop((model_id, node), None)

    def in_flight(self, model_id: str, node: str) -> int:
        with self._lock:
            return max(0, self._in_flight.get((model_id, node), 0))

    def last_used_ms(self, model_id: str, node: str) -> int | None:
        with self._lock:
            return self._last_used.get((model_id, node))

    def endpoints(self, model_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self._routes.get(model_id, {}))


_local = LocalLiveState()
_redis_states: dict[str, RedisLiveState] = {}


def live_state() -> RedisLiveState | LocalLiveState:
    if not settings.REDIS_URL:
        return _local
    if settings.REDIS_URL not in _redis_states:
        _redis_states[settings.REDIS_URL] = RedisLiveState(settings.REDIS_URL)
    return _redis_states[settings.REDIS_URL]
