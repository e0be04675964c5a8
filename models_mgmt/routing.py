"""Routing for the gateway: which engine serves a request for a model.

`openai` and `local` models are served where they are. A `process` model goes to a node where
it is ready, the one with the fewest requests in flight (one Redis call, which also counts the
request); if none has it, the gateway asks for a load and waits up to ROUTING_LOAD_WAIT_SECONDS,
else answers 503 with Retry-After.
"""

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from models_mgmt import placements
from models_mgmt.engines import engine_for
from models_mgmt.engines.errors import EngineError
from models_mgmt.engines.openai_compat import OpenAICompatibleEngine
from models_mgmt.live import live_state
from models_mgmt.models import Placement, ServedModel
from saas_platform import metrics
from saas_platform.threads import in_db_thread

logger = logging.getLogger(__name__)

LOAD_POLL_SECONDS = 0.2


class ModelNotReady(EngineError):
    status = 503
    code = "model_not_ready"
    error_type = "server_error"
    retry_after = 10


def _request_load(model: ServedModel) -> None:
    """Ask for a load unless one is already under way: concurrent requests for a cold model
    share one load."""
    recent = timezone.now() - timedelta(seconds=settings.ROUTING_LOAD_WAIT_SECONDS)
    pending = Placement.objects.filter(
        model=model, state__in=[Placement.State.QUEUED, Placement.State.LOADING],
        updated_at__gte=recent,
    )  # fmt: skip
    if not pending.exists():
        placements.placement_request_load(model=model)


_request_load_async = in_db_thread(_request_load)


def _failed(model: ServedModel) -> bool:
    """Whether every placement of the model has failed (e.g. no node could make room)."""
    states = set(Placement.objects.filter(model=model).values_list("state", flat=True))
    return states == {Placement.State.FAILED}


_load_failed = in_db_thread(_failed)

# When this process last asked for a replica of each model: one ask per model per
# SCALE_OUT_AFTER_SECONDS, however many of its requests wait.
_scale_out_asked: dict[str, float] = {}
_scale_out = in_db_thread(lambda model: placements.placement_request_scale_out(model=model))


async def request_scale_out(model: ServedModel) -> None:
    """A request for `model` has waited SCALE_OUT_AFTER_SECONDS in its queue: ask for another
    replica if it may have one (placements.placement_request_scale_out decides)."""
    if model.engine != ServedModel.Engine.PROCESS or model.max_replicas <= 1:
        return
    now = time.monotonic()
    if now - _scale_out_asked.get(model.model_id, -math.inf) < settings.SCALE_OUT_AFTER_SECONDS:
        return
    _scale_out_asked[model.model_id] = now
    try:
        await _scale_out(model)
    except Exception:  # the request waits on either way; the next ask may succeed
        logger.exception("asking for a replica of %s failed", model.model_id)


@dataclass(frozen=True)
class Route:
    """Where one request goes: its engine and, for a `process` model, the node, whose count of
    requests in flight the request holds until `finished` (or `queue_finished`)."""

    engine: object
    model_id: str
    node: str | None = None

    async def finished(self) -> None:
        if self.node is not None:
            await live_state().finished(self.model_id, self.node)

    def queue_finished(self, pipe) -> bool:
        """`finished`, queued on a Redis pipeline; False if there is nothing to queue there."""
        live = live_state()
        if self.node is None or not hasattr(live, "queue_finished"):
            return False
        live.queue_finished(pipe, self.model_id, self.node)
        return True


async def route_request(model: ServedModel) -> Route:
    """The engine for one request (loading the model on a node first if none has it)."""
    if model.engine != ServedModel.Engine.PROCESS:
        return Route(engine=engine_for(model), model_id=model.model_id)
    live = live_state()
    route = await live.route(model.model_id)
    if route is None:
        started = time.monotonic()
        await _request_load_async(model)
        deadline = started + settings.ROUTING_LOAD_WAIT_SECONDS
        polls = 0
        while route is None and time.monotonic() < deadline:
            await asyncio.sleep(LOAD_POLL_SECONDS)
            route = await live.route(model.model_id)
            polls += 1
            if route is None and polls % 5 == 0 and await _load_failed(model):
                raise placements.PlacementError(
                    f"No node has room for '{model.model_id}' now. Retry shortly."
                )
        metrics.COLD_START_WAITS.observe(time.monotonic() - started)
        if route is None:
            raise ModelNotReady(f"The model '{model.model_id}' is loading. Retry shortly.")
    node, endpoint = route
    return Route(engine=OpenAICompatibleEngine(base_url=endpoint), model_id=model.model_id,
                 node=node)  # fmt: skip
