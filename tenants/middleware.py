"""The tenant middleware (the seed's TenantRegistry.Middleware): on the API (/v1/), the bearer
key names the tenant, or the request is refused with OpenAI's error shape. It authenticates by
itself, before any view, and adds OpenAI's x-ratelimit-* headers to every response."""

import logging

from asgiref.sync import markcoroutinefunction
from django.db import DatabaseError

from saas_platform import metrics
from saas_platform.errors import PlatformError, ServiceUnavailable, error_response
from saas_platform.threads import in_db_thread
from tenants import refusals, services
from tenants.admission import rate_limit_headers

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"


def bearer_key(request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


# Key lookups may touch the database; they run in the thread pool so the event loop never waits.
_authenticate = in_db_thread(services.tenant_for_key)


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
