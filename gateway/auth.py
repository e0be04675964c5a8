"""Step 1: the bearer key names the tenant (the seed's TenantRegistry.Middleware), or the request
is refused with one of the key refusals (401 missing, malformed, unknown, revoked or expired
key; 403 suspended tenant).

Guessing keys is bounded per client address: past AUTH_FAILURES_PER_MINUTE refusals in a
minute, an address gets 429 without a lookup. The address is the connection's, or the forwarded
one when the peer is one of TRUSTED_PROXIES (saas_platform/addresses.py). The
count is read only when a key is not in this process's memory, so a known key costs nothing.
"""

import threading
import time

from django.conf import settings
from django.utils import timezone
from redis.exceptions import RedisError

from saas_platform import redis_clients
from saas_platform.errors import PermissionDenied, PlatformError, RateLimited
from saas_platform.threads import in_db_thread
from tenants import apikeys, services
from tenants.models import ApiKey

AUTH_WINDOW_SECONDS = 60


class TooManyAuthFailures(RateLimited):
    code = "too_many_authentication_failures"

    def __init__(self, retry_after: int):
        super().__init__(
            "Too many requests with an invalid API key from this address. Retry later.",
            retry_after=retry_after,
            code=self.code,
        )


class ManageKeyRefused(PermissionDenied):
    """A key of scope `manage` manages keys (/api/keys); it never calls models."""

    code = "wrong_key_scope"

    def __init__(self):
        super().__init__(
            "This API key may only manage keys (/api/keys); use an inference key for /v1/."
        )


def _inference_only(found: services.Authenticated) -> services.Authenticated:
    if found.api_key.scope != ApiKey.Scope.INFERENCE:
        raise ManageKeyRefused()
    return found


class _LocalFailures:
    """The embedded default's counts (one server process), bounded: the oldest minute goes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def get(self, address: str, window: int) -> int:
        with self._lock:
            return self._counts.get((address, window), 0)

    def add(self, address: str, window: int) -> None:
        with self._lock:
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            self._counts[(address, window)] = self._counts.get((address, window), 0) + 1


_local_failures = _LocalFailures()


def _failure_key(address: str, window: int) -> str:
    return f"authfail:{{{address}}}:{window}"


async def _failures(address: str, window: int) -> int:
    if not settings.REDIS_URL:
        return _local_failures.get(address, window)
    try:
        return int(await redis_clients.async_client().get(_failure_key(address, window)) or 0)
    except (RedisError, OSError):
        return 0  # the limiter's outage is admission's to refuse; keys are still checked


async def _count_failure(address: str, window: int) -> None:
    if not settings.REDIS_URL:
        _local_failures.add(address, window)
        return
    key = _failure_key(address, window)
    try:
        async with redis_clients.async_client().pipeline(transaction=False) as pipe:
            pipe.incr(key).expire(key, AUTH_WINDOW_SECONDS * 2)
            await pipe.execute()
    except (RedisError, OSError):
        pass


# Key lookups may touch the database; they run in the thread pool so the event loop never waits.
_lookup_in_thread = in_db_thread(services.tenant_for_key)

# A key this process authenticated in the last APIKEY_PROCESS_CACHE_SECONDS is served from
# here, on the event loop: no thread hop and no cache round trip per request. A revocation,
# suspension or quota change (which clears the shared cache at once) reaches this process
# within that time.
_recent: dict[str, tuple[float, services.Authenticated]] = {}
_MAX_RECENT = 10_000


async def authenticate(authorization: str, address: str) -> services.Authenticated:
    """The tenant and key of an `Authorization` header value sent from `address`, or raises
    the refusal."""
    presented = apikeys.bearer_key(authorization)
    ttl = min(settings.APIKEY_PROCESS_CACHE_SECONDS, settings.APIKEY_CACHE_SECONDS)
    digest = apikeys.key_digest(presented) if presented else None
    hit = _recent.get(digest) if digest else None
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        found = hit[1]
        # Expiry is a moment, not an event: checked on every request.
        if found.api_key.state_at(timezone.now()) == ApiKey.State.ACTIVE:
            return _inference_only(found)
    now_seconds = time.time()
    window = int(now_seconds // AUTH_WINDOW_SECONDS)
    if await _failures(address, window) >= settings.AUTH_FAILURES_PER_MINUTE:
        retry = AUTH_WINDOW_SECONDS - int(now_seconds % AUTH_WINDOW_SECONDS)
        raise TooManyAuthFailures(retry)
    try:
        found = await _lookup_in_thread(presented)
    except PlatformError as error:
        if error.status == 401:  # a wrong key; a suspended tenant's is a right one
            await _count_failure(address, window)
        raise
    if ttl > 0:
        if len(_recent) > _MAX_RECENT:
            _recent.clear()
        _recent[digest] = (now + ttl, found)
    return _inference_only(found)
