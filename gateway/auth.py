"""Step 1: the bearer key names the tenant (the seed's TenantRegistry.Middleware), or the request
is refused with one of the key refusals (401 missing, malformed, unknown, revoked or expired
key; 403 suspended tenant)."""

import time

from django.conf import settings
from django.utils import timezone

from saas_platform.threads import in_db_thread
from tenants import apikeys, services
from tenants.models import ApiKey

# Key lookups may touch the database; they run in the thread pool so the event loop never waits.
_lookup_in_thread = in_db_thread(services.tenant_for_key)

# A key this process authenticated in the last APIKEY_PROCESS_CACHE_SECONDS is served from
# here, on the event loop: no thread hop and no cache round trip per request. A revocation,
# suspension or quota change (which clears the shared cache at once) reaches this process
# within that time.
_recent: dict[str, tuple[float, services.Authenticated]] = {}
_MAX_RECENT = 10_000


async def authenticate(authorization: str) -> services.Authenticated:
    """The tenant and key of an `Authorization` header value, or raises the refusal."""
    presented = apikeys.bearer_key(authorization)
    ttl = min(settings.APIKEY_PROCESS_CACHE_SECONDS, settings.APIKEY_CACHE_SECONDS)
    digest = apikeys.key_digest(presented) if presented else None
    hit = _recent.get(digest) if digest else None
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        found = hit[1]
        # Expiry is a moment, not an event: checked on every request.
        if found.api_key.state_at(timezone.now()) == ApiKey.State.ACTIVE:
            return found
    found = await _lookup_in_thread(presented)
    if ttl > 0:
        if len(_recent) > _MAX_RECENT:
            _recent.clear()
        _recent[digest] = (now + ttl, found)
    return found
