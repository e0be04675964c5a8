"""Step 7: finishing an admitted request, whatever its ending (success, engine error, client
gone mid-stream), in one Redis round trip: settle its admission (release the lease, reconcile
the token reservation to the real count, release the cost it held and add its real cost to the
month's spend), give back the engine slot (gateway.fair_queue), end the request's count in
flight on its node, and append its one usage event to the usage stream. Recorders that are not
a Redis stream get the event from the publisher's background thread.

It runs in a task of its own, shielded from cancellation, so a client that disconnects while it
runs cannot lose the release or the event (the slot leak peer gateways have had).
"""

import asyncio
import logging

from django.conf import settings
from redis.exceptions import NoScriptError, RedisError

from billing.usage import publisher
from gateway.admission import Lease
from gateway.fair_queue import Slot
from gateway.metering import UsageMeter
from models_mgmt.routing import Route
from saas_platform import metrics, redis_clients

logger = logging.getLogger(__name__)

# Strong references to finishing tasks, so none is garbage-collected half-way.
_finishing: set[asyncio.Task] = set()


async def _finish(
    meter: UsageMeter, lease: Lease, route: Route | None, status: int, slot: Slot | None
) -> None:
    event = meter.event(status=status)
    cost = lease.cost(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
    recorders = publisher()
    recorded_by: list = []
    released = routed = freed = False
    if settings.REDIS_URL:
        pipe = redis_clients.async_client().pipeline(transaction=False)
        released = lease.queue_settle(pipe, meter.total_tokens, cost)
        routed = route is not None and route.queue_finished(pipe)
        freed = slot is not None and slot.queue_release(pipe)
        appended = recorders.queue_appends(pipe, event)
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as error:
            # The lease expires by itself; the event goes through the publisher's retries.
            metrics.ADMISSION_BACKEND_ERRORS.labels(outcome="release_failed").inc()
            logger.warning("finishing %s in Redis failed: %s", meter.request_id, error)
            results = None
        if results is not None:
            if released and isinstance(results[0], NoScriptError):
                await lease.settle(meter.total_tokens, cost, again=True)  # loads the script
            if freed:
                slot_result = results[released + routed]
                if isinstance(slot_result, NoScriptError):
                    await slot.release(again=True)
                else:
                    slot.released_by(slot_result)
            recorded_by = [
                recorder
                for recorder, result in zip(
                    appended, results[released + routed + freed :], strict=True
                )
                if not isinstance(result, Exception)
            ]
    if not released:
        await lease.settle(meter.total_tokens, cost)
    if route is not None and not routed:
        await route.finished()
    if slot is not None and not freed:
        await slot.release()
    await recorders.publish(event, recorded_by=recorded_by)


async def finish(
    meter: UsageMeter, lease: Lease, route: Route | None, *, status: int, slot: Slot | None = None
) -> None:
    """Finish the request in a task that a cancellation of the caller cannot interrupt."""
    task = asyncio.ensure_future(_finish(meter, lease, route, status, slot))
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    # If this await is cancelled, the task goes on by itself and finishes the request.
    await asyncio.shield(task)
