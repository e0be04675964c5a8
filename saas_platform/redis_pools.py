"""Redis connection pools for the gateway's async hot path (admission, the usage stream)."""

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def redis_pool(url: str, *, max_connections: int) -> aioredis.BlockingConnectionPool:
    """An async Redis pool for the gateway's hot path. A burst past its size waits for a free
    connection instead of failing (the default pool raises at once: a 503 for every request
    over its size). Waits and timeouts are generous because on a saturated event loop replies
    and connections are seen late: 2,000 streams opened at once on one core waited past 2 s
    and timed out 1 s connects. A Redis that is down still fails at once (connection refused);
    only a hung one costs the timeouts.

    A pooled connection to a Redis that has since restarted fails once ("Connection closed by
    server") and is then reconnected: that one failure is retried at once, instead of refusing
    a request seconds after Redis is back. Only connection errors, never timeouts: a command
    that timed out may have run."""
    return aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=15, socket_connect_timeout=5,
        socket_timeout=5, retry_on_error=[RedisConnectionError],
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )  # fmt: skip
