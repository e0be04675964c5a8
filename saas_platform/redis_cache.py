"""Django's cache on a Redis Cluster: Django's own Redis backend, with redis_clients' cluster
client in place of its per-server pools (settings use it when REDIS_URL names a cluster; on one
Redis the cache stays django-redis).

Django's client sends MGET and MSET for the many-key calls and FLUSHDB to clear; on a cluster a
multi-key command must stay in one slot, so those are per key here (a pipeline, one round trip
per node), and `clear` deletes this cache's keys only: FLUSHDB would take the admission, spend
and routing state with it. As with django-redis' IGNORE_EXCEPTIONS on one Redis, a cache that
cannot be reached is a miss (logged), never a failed request: key lookups fall back to the
database.
"""

import functools
import logging

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from saas_platform.redis_clients import sync_client

logger = logging.getLogger(__name__)

_DELETE_CHUNK = 500


class ClusterCacheClient(RedisCacheClient):
    def __init__(self, servers, *, key_prefix: str = "", **options):
        super().__init__(servers, **options)
        self._url = servers[0]
        self._key_prefix = key_prefix

    def get_client(self, key=None, *, write=False):
        return sync_client(self._url)

    def get_many(self, keys):
        keys = list(keys)
        values = self.get_client().mget_nonatomic(keys)
        return {k: self._serializer.loads(v) for k, v in zip(keys, values, strict=True)
                if v is not None}  # fmt: skip

    def set_many(self, data, timeout):
        pipe = self.get_client(write=True).pipeline(transaction=False)
        for key, value in data.items():
            if timeout == 0:
                pipe.delete(key)
            else:
                pipe.set(key, self._serializer.dumps(value), ex=timeout)
        pipe.execute()

    def clear(self):
        client = self.get_client(write=True)
        # Django's keys are "<prefix>:<version>:<key>"; glob characters in the prefix escaped.
        prefix = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self._key_prefix)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000,
                                     target_nodes=RedisCluster.PRIMARIES))  # fmt: skip
        for start in range(0, len(keys), _DELETE_CHUNK):
            client.delete(*keys[start : start + _DELETE_CHUNK])  # split per slot by redis-py
        return True


def _degrading(method, fallback):
    @functools.wraps(method)
    def call(self, *args):
        try:
            return method(self, *args)
        except (RedisError, RedisClusterException, OSError) as error:
            logger.warning("cache %s failed, treated as a miss: %s", method.__name__, error)
            return fallback(*args)

    return call


# What each call answers when the cluster cannot be reached: nothing cached, nothing stored.
for _name, _fallback in {
    "add": lambda *args: False,
    "get": lambda key, default: default,
    "set": lambda *args: None,
    "touch": lambda *args: False,
    "delete": lambda *args: False,
    "get_many": lambda *args: {},
    "has_key": lambda *args: False,
    "set_many": lambda *args: None,
    "delete_many": lambda *args: None,
    "clear": lambda *args: False,
}.items():
    setattr(ClusterCacheClient, _name, _degrading(getattr(ClusterCacheClient, _name), _fallback))


class ClusterRedisCache(RedisCache):
    """CACHES' BACKEND for a Redis Cluster; LOCATION is REDIS_URL (`redis+cluster://...`)."""

    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = ClusterCacheClient
        self._options = {**self._options, "key_prefix": self.key_prefix}
