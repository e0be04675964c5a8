"""Every Redis client of the platform, from one place: one pool per process (per event loop, for
async clients) and per URL, one set of timeouts, one retry rule. Nothing else builds a client.

`REDIS_URL` names one Redis (`redis://host:port/db`, `rediss://` for TLS) or a Redis Cluster
(`redis+cluster://host:port`, `rediss+cluster://` for TLS: any one node; the others are
discovered). On a cluster every Lua script's keys share a hash tag, so each script runs on one
slot; a pipeline (transaction=False) may span slots: it is split per node, one round trip to
each at once. redis-py's cluster pipeline refuses its `evalsha()` method: queue a script there
as `pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)` (one Redis takes that too).

Timeouts are generous because on a saturated event loop replies and connections are seen late:
2,000 streams opened at once on one core waited past 2 s and timed out 1 s connects. A Redis that
is down still fails at once (connection refused); only a hung one costs the timeouts. A burst
past a pool's size waits for a free connection instead of failing (on a cluster, whose client has
no waiting pool, a burst past ASYNC_MAX_CONNECTIONS to one node fails: MaxConnectionsError).

A pooled connection to a Redis that has since restarted fails once ("Connection closed by
server") and is then reconnected: that one failure is retried at once, instead of refusing a
request seconds after Redis is back. Only connection errors, never timeouts: a command that
timed out may have run (on a cluster the same for single commands; redis-py's cluster pipeline
retries a timed-out pipeline once, so what is queued on one must bear a rerun). A cluster that
cannot be reached at all raises ConnectionError, a RedisError, as one Redis does (redis-py's own
RedisClusterException is not one), so every `except RedisError` holds on both. hiredis, when
installed (it is a dependency), parses the replies.
"""

import asyncio
import os
import threading
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.cluster import NodesManager as AsyncNodesManager
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import NodesManager, RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

# Connections each pool may open: the gateway's event loop runs thousands of requests at once.
ASYNC_MAX_CONNECTIONS = 1024
SYNC_MAX_CONNECTIONS = 64
SOCKET_TIMEOUT = 5
CONNECT_TIMEOUT = 5
POOL_WAIT_TIMEOUT = 15

# What a cluster client retries (once, after finding the cluster's nodes again): not a timeout.
_CLUSTER_RETRIED = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)


class _AsyncCluster(AsyncRedisCluster):
    ERRORS_ALLOW_RETRY = _CLUSTER_RETRIED

    async def execute_command(self, *args, **kwargs):
        # redis-py (8.1) picks a command's node before it has found the cluster's nodes: the
        # first commands of a fresh client, sent at once, go to a wrong node (MOVED), and the
        # reconnects that follow break connections still in use. Find the nodes first.
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)


class _Cluster(RedisCluster):
    ERRORS_ALLOW_RETRY = _CLUSTER_RETRIED


# Finding the cluster's nodes (as a client starts, and again after a node failed) raises
# redis-py's RedisClusterException when none answers or the slots are not all served: raised
# here as the ConnectionError that one Redis raises.
class _AsyncNodesManager(AsyncNodesManager):
    __slots__ = ()

    async def initialize(self, *args, **kwargs):
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as error:
            raise RedisConnectionError(str(error)) from error


class _NodesManager(NodesManager):
    __slots__ = ()

    def initialize(self, *args, **kwargs):
        try:
            return super().initialize(*args, **kwargs)
        except RedisClusterException as error:
            raise RedisConnectionError(str(error)) from error


def _unreachable_is_connection_error(client):
    """The client with its nodes manager (which its constructor makes) made ours."""
    manager = client.nodes_manager
    asynchronous = isinstance(manager, AsyncNodesManager)
    manager.__class__ = _AsyncNodesManager if asynchronous else _NodesManager
    return client


AsyncClient = aioredis.Redis | AsyncRedisCluster
SyncClient = redis.Redis | RedisCluster

_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = (
    weakref.WeakKeyDictionary()
)
_sync_clients: dict[tuple[int, str, bool], SyncClient] = {}
_sync_lock = threading.Lock()  # threads (Django's, Celery's) ask for the first client at once


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def _plain_url(url: str) -> str:
    """The URL redis-py's cluster client reads: the scheme without `+cluster`."""
    return url.replace("+cluster://", "://", 1)


def _configured(url: str | None) -> str:
    url = url or settings.REDIS_URL
    if not url:
        raise RuntimeError("REDIS_URL is not set: there is no Redis to talk to")
    return url


def _build_async(url: str, decode_responses: bool) -> AsyncClient:
    if is_cluster(url):
        client = _AsyncCluster.from_url(  # it finds the nodes on its first command
            _plain_url(url),
            decode_responses=decode_responses,
            max_connections=ASYNC_MAX_CONNECTIONS,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            retry=AsyncRetry(NoBackoff(), 1),
        )
        return _unreachable_is_connection_error(client)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=ASYNC_MAX_CONNECTIONS, timeout=POOL_WAIT_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
        decode_responses=decode_responses, retry_on_error=[RedisConnectionError],
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )  # fmt: skip
    return aioredis.Redis(connection_pool=pool)


def _build_sync(url: str, decode_responses: bool) -> SyncClient:
    if is_cluster(url):
        try:  # it finds the cluster's nodes at once
            client = _Cluster.from_url(
                _plain_url(url),
                decode_responses=decode_responses,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 1),
            )
        except RedisClusterException as error:
            raise RedisConnectionError(str(error)) from error
        return _unreachable_is_connection_error(client)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=SYNC_MAX_CONNECTIONS, timeout=POOL_WAIT_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
        decode_responses=decode_responses, retry_on_error=[RedisConnectionError],
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )  # fmt: skip
    return redis.Redis(connection_pool=pool)


def async_client(url: str | None = None, *, decode_responses: bool = False) -> AsyncClient:
    """The async client for `url` (default REDIS_URL) on the running event loop. A client
    belongs to the loop it was made in, so there is one per loop (one in a server process)."""
    url = _configured(url)
    loop = asyncio.get_running_loop()
    clients = _async_clients.setdefault(loop, {})
    key = (url, decode_responses)
    client = clients.get(key)
    if client is None:
        client = clients[key] = _build_async(url, decode_responses)
    return client


def sync_client(url: str | None = None, *, decode_responses: bool = False) -> SyncClient:
    """The blocking client for `url` (default REDIS_URL) in this process (a forked worker gets
    its own: a pool's sockets must not be shared across a fork). Safe to share across threads.
    For a cluster it connects at once: an unreachable one raises ConnectionError here, and the
    next call tries again."""
    url = _configured(url)
    key = (os.getpid(), url, decode_responses)
    client = _sync_clients.get(key)
    if client is None:
        with _sync_lock:
            client = _sync_clients.get(key)
            if client is None:
                client = _sync_clients[key] = _build_sync(url, decode_responses)
    return client
