"""The ASGI application of /v1/: read the request, name its tenant by the bearer key, dispatch it
to the inference pipeline or the model list, and count it. Mounted in front of Django by
saas_platform.asgi; it never goes through Django's handler, URL resolver or middleware.

A client that goes away while its request is served cancels the request (recorded as 499,
with what it used); finishing it is shielded from that cancellation (gateway.finish).
"""

import asyncio
import logging
import time

from django.conf import settings
from django.db import DatabaseError
from django.http.request import split_domain_port, validate_host

from gateway import auth, catalog, pipeline
from gateway.admission import rate_limit_headers
from gateway.errors import (
    DisallowedHost,
    HttpsRequired,
    MethodNotAllowed,
    ModelNotFound,
    UnknownEndpoint,
)
from gateway.http import ClientGone, Headers, Request, TrackedSend, send_error, send_json
from gateway.metering import CLIENT_CLOSED_REQUEST
from gateway.parsing import Endpoint
from saas_platform import metrics
from saas_platform.errors import (
    PlatformError,
    RequestTimeout,
    RequestTooLarge,
    ServerError,
    ServiceUnavailable,
)
from tenants.refusals import count_refusal

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"
MODELS_PATH = API_PREFIX + "models"
INFERENCE_PATHS = {
    API_PREFIX + "chat/completions": Endpoint.CHAT,
    API_PREFIX + "completions": Endpoint.COMPLETIONS,
    API_PREFIX + "embeddings": Endpoint.EMBEDDINGS,
}


def route_label(path: str) -> str:
    """The metrics label of a path: its route, never the raw path (that would grow without
    bound, and name other tenants' models)."""
    if path in INFERENCE_PATHS or path == MODELS_PATH:
        return path
    if path.startswith(MODELS_PATH + "/"):
        return MODELS_PATH + "/{model}"
    return API_PREFIX + "{unknown}"


def _hsts() -> Headers:
    """Strict-Transport-Security as Django's SecurityMiddleware sends it."""
    if not settings.SECURE_HSTS_SECONDS:
        return []
    value = f"max-age={settings.SECURE_HSTS_SECONDS}"
    if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
        value += "; includeSubDomains"
    if settings.SECURE_HSTS_PRELOAD:
        value += "; preload"
    return [(b"strict-transport-security", value.encode())]


def _refusal_of_origin(request: Request) -> PlatformError | None:
    """The Host and HTTPS rules the rest of the site gets from Django (ALLOWED_HOSTS,
    SECURE_SSL_REDIRECT). A plain-HTTP API request is refused rather than redirected: its key
    has already crossed the network in clear, and a redirected POST would send it again."""
    domain, _port = split_domain_port(request.host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # as Django does in debug
    if not domain or not validate_host(domain, allowed):
        return DisallowedHost(f"Invalid Host header: {request.host[:100]!r}.")
    if settings.SECURE_SSL_REDIRECT and request.scheme != "https":
        return HttpsRequired(f"Use https://{request.host}{API_PREFIX} for this API.")
    return None


async def application(scope, receive, send) -> None:
    request = Request(scope, receive)
    started = time.monotonic()
    send = TrackedSend(send, _hsts() if request.scheme == "https" else ())
    try:
        refusal = _refusal_of_origin(request)
        if refusal is not None:
            await send_error(send, refusal, [("x-request-id", request.request_id)])
            status = refusal.status
        else:
            status = await _handle(request, send)
    except Exception:
        logger.exception("the gateway failed on %s", request.request_id)
        status = 500
        if not send.started:
            error = ServerError("The server had an error processing your request.")
            await send_error(send, error, [("x-request-id", request.request_id)])
    label = route_label(request.path)
    metrics.REQUESTS.labels(endpoint=label, status=str(status)).inc()
    metrics.LATENCY.labels(endpoint=label).observe(time.monotonic() - started)


async def _handle(request: Request, send: TrackedSend) -> int:
    headers = [("x-request-id", request.request_id)]
    if request.method == "POST":
        try:
            await request.read_body()
        except (RequestTooLarge, RequestTimeout) as error:
            await send_error(send, error, headers, close=True)
            return error.status
        except ClientGone:
            return CLIENT_CLOSED_REQUEST
    try:
        caller = await auth.authenticate(request.header(b"authorization"), request.client)
    except PlatformError as error:
        metrics.REFUSALS.labels(reason=error.code).inc()
        count_refusal(error.code)
        await send_error(send, error, headers)
        return error.status
    except DatabaseError:
        logger.exception("key lookup failed: database unavailable")
        error = ServiceUnavailable("The service is briefly unavailable.")
        await send_error(send, error, headers)
        return error.status

    served = asyncio.current_task()

    async def cancel_on_disconnect() -> None:
        await request.wait_for_disconnect()
        if not send.complete:
            served.cancel()

    watcher = asyncio.ensure_future(cancel_on_disconnect())
    try:
        return await _dispatch(request, send, caller)
    except asyncio.CancelledError:
        if watcher.done() and not send.complete:  # the client left: not an error of ours
            return CLIENT_CLOSED_REQUEST
        raise
    finally:
        watcher.cancel()


async def _dispatch(request: Request, send, caller) -> int:
    path = request.path
    endpoint = INFERENCE_PATHS.get(path)
    if endpoint is not None:
        return await pipeline.serve(request, send, endpoint, caller)
    headers = [("x-request-id", request.request_id),
               *rate_limit_headers(caller, None)]  # fmt: skip
    if path == MODELS_PATH or path.startswith(MODELS_PATH + "/"):
        if request.method not in ("GET", "HEAD"):
            error = MethodNotAllowed(f"Use GET for {path}.", allow="GET, HEAD")
            await send_error(send, error, headers)
            return error.status
        if path == MODELS_PATH:
            models = await catalog.allowed_models(caller)
            await send_json(send, 200, catalog.model_list(models), headers)
            return 200
        model_id = path.removeprefix(MODELS_PATH + "/")
        model = await catalog.allowed_model(caller, model_id)
        if model is None:
            error = ModelNotFound(model_id)
            await send_error(send, error, headers)
            return error.status
        await send_json(send, 200, catalog.model_object(model), headers)
        return 200
    error = UnknownEndpoint(f"Unknown endpoint: {request.method} {path[:104]}")
    await send_error(send, error, headers)
    return error.status
