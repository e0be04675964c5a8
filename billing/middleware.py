"""The billing middleware (the seed's BillingMiddleware): every API request gets a request id
(returned as x-request-id) and a UsageMeter; when the response has ended, whatever the ending
(last byte of a stream, engine error, client gone), the meter finishes exactly once: it releases
what the request held and publishes one UsageEvent if the request was admitted."""

from asgiref.sync import markcoroutinefunction

from billing.metering import UsageMeter
from tenants.middleware import API_PREFIX


class BillingMiddleware:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        tenant = getattr(request, "tenant", None)
        if tenant is None or not request.path.startswith(API_PREFIX):
            return await self.get_response(request)
        meter = UsageMeter(
            tenant_id=tenant.pk,
            api_key_prefix=request.api_key.display_prefix,
            endpoint=request.path,
        )
        request.usage = meter
        try:
            response = await self.get_response(request)
        except BaseException:
            # Cancelled (the client went away while the engine worked) or worse: still
            # release and record what the request held.
            await meter.finish_shielded(status=499)
            raise
        response["x-request-id"] = meter.request_id
        if response.streaming:
            response.streaming_content = meter.metered_stream(
                response.streaming_content, status=response.status_code
            )
        else:
            await meter.finish_shielded(status=response.status_code)
        return response
