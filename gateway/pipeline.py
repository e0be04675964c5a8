"""One inference request, top to bottom: parse and check the body, admit it under its tenant's
limits, route it to an engine, relay the answer (whole or streamed), and finish it: release what
it held and publish its one usage event, however it ends.

The key has already named the tenant (gateway.auth); the steps are one module each:
parsing, catalog, admission, routing (models_mgmt.routing), relay, metering, finish.
"""

import asyncio
from contextlib import aclosing
from dataclasses import dataclass

from django.conf import settings

from gateway import admission, catalog, fair_queue, finish, images, parsing, relay
from gateway.errors import MethodNotAllowed, ModelNotFound
from gateway.http import EventStream, Request, send_error, send_json
from gateway.metering import CLIENT_CLOSED_REQUEST, UsageMeter
from gateway.parsing import Endpoint, InferenceRequest, InvalidRequest
from models_mgmt.engines import EngineError, EngineTimeout
from models_mgmt.models import ServedModel
from models_mgmt.routing import Route, route_request
from saas_platform.errors import PlatformError, RateLimited
from tenants.services import Authenticated

_TASKS = {
    Endpoint.CHAT: ServedModel.Task.CHAT,
    Endpoint.COMPLETIONS: ServedModel.Task.CHAT,
    Endpoint.EMBEDDINGS: ServedModel.Task.EMBEDDINGS,
}


@dataclass
class Admitted:
    """What an admitted request holds until it is finished, once."""

    meter: UsageMeter
    lease: admission.Lease
    slot: fair_queue.Slot | None = None
    route: Route | None = None
    tally: relay.StreamTally | None = None
    finished: bool = False

    async def finish(self, *, status: int) -> None:
        if self.finished:
            return
        self.finished = True
        if self.tally is not None:
            await self.tally.settle(self.meter)  # a stream's tokens, however far it got
        await finish.finish(self.meter, self.lease, self.route, status=status, slot=self.slot)


async def _check(
    request: Request, endpoint: Endpoint, caller: Authenticated
) -> tuple[InferenceRequest, ServedModel]:
    if request.method != "POST":
        raise MethodNotAllowed(f"Use POST for {request.path}.", allow="POST")
    parsed = parsing.parse(endpoint, request.body)
    model = await catalog.allowed_model(caller, parsed.model)
    if model is None:
        raise ModelNotFound(parsed.model)
    if model.task != _TASKS[endpoint]:
        raise InvalidRequest(
            f"The model '{model.model_id}' does not support {request.path}.", param="model"
        )
    await images.check_images(parsed.image_urls, model)
    return parsed, model


async def serve(request: Request, send, endpoint: Endpoint, caller: Authenticated) -> int:
    """Serve one inference request; returns the status it ended with."""
    tenant = caller.tenant
    headers = [("x-request-id", request.request_id)]
    try:
        parsed, model = await _check(request, endpoint, caller)
        lease, decision = await admission.acquire(
            caller=caller, lease_id=request.request_id, request=parsed, model_id=model.model_id
        )
    except PlatformError as error:
        refused = getattr(error, "decision", None) if isinstance(error, RateLimited) else None
        await send_error(send, error, [*headers, *admission.rate_limit_headers(caller, refused)])
        return error.status
    headers += admission.rate_limit_headers(caller, decision)
    meter = UsageMeter(request_id=request.request_id, tenant_id=tenant.pk,
                       api_key_prefix=caller.api_key.display_prefix, endpoint=request.path,
                       model=model.model_id)  # fmt: skip
    admitted = Admitted(meter=meter, lease=lease)
    status = CLIENT_CLOSED_REQUEST  # unless the request gets further
    try:
        admitted.slot = await fair_queue.acquire(model=model, tenant=tenant,
                                                 priority=caller.api_key.priority,
                                                 request_id=request.request_id)  # fmt: skip
        if admitted.slot is not None:
            meter.queue_ms = admitted.slot.queue_ms
        admitted.route = await route_request(model)
        engine = admitted.route.engine
        forwarded = relay.forwarded_body(parsed, model, bounded=lease.holds_cost)
        if parsed.stream:
            status = await _stream(send, headers, parsed, model, admitted, forwarded)
        else:
            result = await engine.request(endpoint, forwarded)
            payload = await relay.metered_response(result, parsed, model, meter, engine)
            status = 200
            await send_json(send, 200, payload, headers)
    except PlatformError as error:  # before any byte of the answer was sent
        status = error.status
        if isinstance(error, EngineError):
            error.message = f"{error.message} Request id: {request.request_id}."
        await send_error(send, error, headers)
    except TimeoutError:  # a stalled client did not take the end of its stream either
        status = CLIENT_CLOSED_REQUEST
    except asyncio.CancelledError:
        status = CLIENT_CLOSED_REQUEST
        raise
    finally:
        await admitted.finish(status=status)
    return status


async def _stream(send, headers, parsed, model, admitted: Admitted, forwarded: dict) -> int:
    """Relay a stream. The request is finished (released and billed) before the last bytes
    go out: a client that has read [DONE] has been billed, even if this process dies then.

    One wall-clock deadline (UPSTREAM_TOTAL_TIMEOUT from admission) covers the whole response,
    sends included, and each send must be taken within RESPONSE_WRITE_TIMEOUT_SECONDS: a
    client that stops reading is dropped as a 499, billed for what was streamed, and cannot
    hold its slot."""
    engine = admitted.route.engine
    chunks = await engine.open_stream(parsed.endpoint, forwarded)  # engine errors: no byte sent
    admitted.tally = tally = relay.StreamTally(parsed, engine)
    stream = EventStream(send, write_timeout=settings.RESPONSE_WRITE_TIMEOUT_SECONDS)
    await stream.start(headers)
    status = 200
    try:
        async with asyncio.timeout_at(admitted.lease.deadline):
            async with (
                aclosing(chunks),
                aclosing(relay.relay_chunks(chunks, parsed, model, tally)) as events,
            ):
                async for event in events:
                    await stream.send(event)
    except EngineError as error:
        # Headers are sent: end the stream cleanly with an error event the client can read.
        status = error.status
        error.message = f"{error.message} Request id: {admitted.meter.request_id}."
        await stream.send(relay.error_event(error))
    except TimeoutError:
        if stream.stalled:  # the client stopped reading
            return CLIENT_CLOSED_REQUEST
        status = EngineTimeout.status
        await stream.send(relay.error_event(EngineTimeout("The response took too long.")))
    await admitted.finish(status=status)
    if status == 200 and parsed.include_usage:
        await stream.send(relay.usage_event(parsed, model, admitted.meter, tally))
    await stream.send(relay.DONE)
    await stream.end()
    return status
