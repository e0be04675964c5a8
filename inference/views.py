"""The OpenAI-compatible endpoints. Async views: the gateway waits on engines, never blocks.

The tenant middleware has authenticated the key (request.tenant); the billing middleware has
put a UsageMeter on the request (request.usage) and finishes it when the response has ended.
"""

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse, StreamingHttpResponse
from django.http.request import RawPostDataException
from django.views.decorators.csrf import csrf_exempt

from inference import parsing, relay
from inference.parsing import Endpoint, InvalidRequest, RequestTooLarge
from models_mgmt.models import ServedModel
from models_mgmt.routing import engine_for_request
from models_mgmt.selectors import acatalog
from saas_platform.errors import PlatformError, RateLimited, error_response
from tenants import admission


class ModelNotFound(PlatformError):
    status = 404
    code = "model_not_found"

    def __init__(self, model_id: str):
        # The same answer whether the model does not exist or the tenant may not use it.
        super().__init__(
            f"The model '{model_id[:200]}' does not exist or you do not have access to it.",
            param="model",
        )


class MethodNotAllowed(PlatformError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str):
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}  # RFC 9110: a 405 names the methods that are allowed


class UnknownEndpoint(PlatformError):
    status = 404
    code = "unknown_url"


_TASKS = {
    Endpoint.CHAT: ServedModel.Task.CHAT,
    Endpoint.COMPLETIONS: ServedModel.Task.CHAT,
    Endpoint.EMBEDDINGS: ServedModel.Task.EMBEDDINGS,
}


async def _allowed_models(tenant) -> dict[str, ServedModel]:
    catalog = await acatalog()
    config = tenant.config
    return {model_id: m for model_id, m in catalog.items() if config.model_allowed(model_id)}


async def _allowed_model(tenant, model_id: str) -> ServedModel | None:
    """One model, if enabled and the tenant may use it: a lookup, not a filtered catalog copy
    on every request."""
    model = (await acatalog()).get(model_id)
    return model if model is not None and tenant.config.model_allowed(model_id) else None


def _read_body(request) -> bytes:
    try:
        return request.body
    except (RequestDataTooBig, RawPostDataException):
        raise RequestTooLarge("The request body is too large.") from None


async def _serve(request, endpoint: Endpoint):
    if request.method != "POST":
        return error_response(MethodNotAllowed(f"Use POST for {request.path}.", allow="POST"))
    meter = request.usage
    try:
        parsed = parsing.parse(endpoint, _read_body(request))
        model = await _allowed_model(request.tenant, parsed.model)
        if model is None:
            raise ModelNotFound(parsed.model)
        if model.task != _TASKS[endpoint]:
            raise InvalidRequest(
                f"The model '{model.model_id}' does not support {request.path}.", param="model"
            )
        lease, decision = await admission.acquire(
            tenant=request.tenant, lease_id=meter.request_id, tokens=parsed.reservation()
        )
    except RateLimited as error:
        request.admission_decision = getattr(error, "decision", None)
        return error_response(error)
    except PlatformError as error:
        return error_response(error)
    request.admission_decision = decision

    async def release(finished_meter):
        await lease.release(finished_meter.total_tokens)

    meter.admit(model=model.model_id, on_finish=release)
    forwarded = relay.forwarded_body(parsed, model)
    try:
        engine, finished = await engine_for_request(model)
        if finished is not None:
            meter.before_publish(lambda _meter: finished())
        if parsed.stream:
            chunks = await engine.open_stream(endpoint, forwarded)
            return StreamingHttpResponse(
                relay.relay_stream(chunks, parsed, model, meter, engine),
                content_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        result = await engine.request(endpoint, forwarded)
        return JsonResponse(await relay.metered_response(result, parsed, model, meter, engine))
    except PlatformError as error:
        return error_response(error)


@csrf_exempt
async def chat_completions(request):
    return await _serve(request, Endpoint.CHAT)


@csrf_exempt
async def completions(request):
    return await _serve(request, Endpoint.COMPLETIONS)


@csrf_exempt
async def embeddings(request):
    return await _serve(request, Endpoint.EMBEDDINGS)


def _model_object(model: ServedModel) -> dict:
    return {
        "id": model.model_id,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": "saas-platform",
    }


def _only_get(request):
    if request.method not in ("GET", "HEAD"):
        return error_response(MethodNotAllowed(f"Use GET for {request.path}.", allow="GET, HEAD"))
    return None


@csrf_exempt
async def list_models(request):
    if refused := _only_get(request):
        return refused
    models = await _allowed_models(request.tenant)
    return JsonResponse(
        {"object": "list", "data": [_model_object(m) for m in sorted(models.values(), key=str)]}
    )


@csrf_exempt
async def retrieve_model(request, model_id: str):
    if refused := _only_get(request):
        return refused
    model = await _allowed_model(request.tenant, model_id)
    if model is None:
        return error_response(ModelNotFound(model_id))
    return JsonResponse(_model_object(model))


@csrf_exempt
async def unknown_endpoint(request, rest: str):
    return error_response(UnknownEndpoint(f"Unknown endpoint: {request.method} /v1/{rest[:100]}"))
