"""The tenant middleware (the seed's TenantRegistry.Middleware): on the API (/v1/), the bearer
key names the tenant, or the request is refused with OpenAI's error shape. It authenticates by
itself, before any view, and adds OpenAI's x-ratelimit-* headers to every response."""

import logging
import time

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from saas_platform import metrics
from saas_platform.errors import PlatformError, ServiceUnavailable, error_response
from saas_platform.threads import in_db_thread
from tenants import apikeys, refusals, services
from tenants.admission import rate_limit_headers
from tenants.models import ApiKey

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"


def bearer_key(request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


# Key lookups may touch the database; they run in the thread pool so the event loop never waits.
_lookup_in_thread = in_db_thread(services.tenant_for_key)

# A key this process authenticated in the last APIKEY_PROCESS_CACHE_SECONDS is served from
# here, on the event loop: no thread hop and no cache round trip per request. A revocation,
# suspension or quota change (which clears the shared cache at once) reaches this process
# within that time.
_recent: dict[str, tuple[float, services.Authenticated]] = {}


async def _authenticate(presented: str | None) -> services.Authenticated:
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
        if len(_recent) > 10_000:
            _recent.clear()
        _recent[digest] = (now + ttl, found)
    return found


class TenantMiddleware:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        if not request.path.startswith(API_PREFIX):
            return await self.get_response(request)
        try:
            found = await _authenticate(bearer_key(request))
        except PlatformError as error:
            metrics.REFUSALS.labels(reason=error.code).inc()
            refusals.count_refusal(error.code)
            return error_response(error)
        except DatabaseError:
            logger.exception("key lookup failed: database unavailable")
            return error_response(ServiceUnavailable("The service is briefly unavailable."))
        request.tenant = found.tenant
        request.api_key = found.api_key
        request.admission_decision = None
        response = await self.get_response(request)
        for name, value in rate_limit_headers(found.tenant, request.admission_decision).items():
            response[name] = value
        return response
