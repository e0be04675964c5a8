"""Per-request metering: what an admitted request used, and its one usage event.

The gateway view fills the meter (model, token counts, how to release its lease); the billing
middleware finishes it once the response has ended. Finishing runs as its own task, shielded
from cancellation, so a client that disconnects while the release is running cannot lose it
(the slot leak peer gateways have had).
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from billing.usage import UsageEvent, publisher
from saas_platform import metrics

logger = logging.getLogger(__name__)

# Strong references to finishing tasks, so none is garbage-collected half-way.
_finishing: set[asyncio.Task] = set()

CLIENT_CLOSED_REQUEST = 499  # the status recorded when the client went away (nginx's)


class UsageMeter:
    def __init__(self, *, tenant_id: int, api_key_prefix: str, endpoint: str):
        self.request_id = f"req_{uuid.uuid4().hex}"
        self.tenant_id = tenant_id
        self.api_key_prefix = api_key_prefix
        self.endpoint = endpoint
        self.started = time.monotonic()
        self.model: str | None = None
        self.admitted = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.usage_source = "reported"
        # Set by a streaming view when the stream ended on an engine error.
        self.stream_error_status: int | None = None
        # Run before the event is published: final token counting, then the lease release.
        self._before_publish: list[Callable[[UsageMeter], Awaitable[None]]] = []
        self._finished = False

    def admit(self, *, model: str, on_finish: Callable[["UsageMeter"], Awaitable[None]]) -> None:
        self.admitted = True
        self.model = model
        self._before_publish.append(on_finish)

    def before_publish(self, step: Callable[["UsageMeter"], Awaitable[None]]) -> None:
        """Run `step` before the release and the event (e.g. counting a stream's tokens)."""
        self._before_publish.insert(0, step)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    async def finish(self, *, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        for step in self._before_publish:
            try:
                await step(self)
            except Exception:
                logger.exception("finishing step failed for %s", self.request_id)
        metrics.REQUESTS.labels(endpoint=self.endpoint, status=str(status)).inc()
        metrics.LATENCY.labels(endpoint=self.endpoint).observe(time.monotonic() - self.started)
        if not self.admitted:
            return
        await publisher().publish(
            UsageEvent(
                request_id=self.request_id,
                tenant_id=str(self.tenant_id),
                api_key_prefix=self.api_key_prefix,
                model=self.model or "",
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                timestamp=int(time.time()),
                latency_ms=int((time.monotonic() - self.started) * 1000),
                status=status,
                usage_source=self.usage_source,
                endpoint=self.endpoint,
            )
        )

    async def finish_shielded(self, *, status: int, before: Awaitable | None = None) -> None:
        """Finish in a task of its own that a second cancellation cannot interrupt."""

        async def run():
            if before is not None:
                await before
            await self.finish(status=status)

        task = asyncio.ensure_future(run())
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)
        # If this await is cancelled, the task goes on by itself and finishes the meter.
        await asyncio.shield(task)

    async def metered_stream(self, content: AsyncIterator[bytes], *, status: int):
        """Pass a streaming body through; when it ends, however it ends, finish the meter."""
        completed = False
        try:
            async for chunk in content:
                yield chunk
            completed = True
        finally:
            final = (self.stream_error_status or status) if completed else CLIENT_CLOSED_REQUEST
            # Close the inner stream first so that its own accounting has run.
            await self.finish_shielded(status=final, before=_aclose(content))


async def _aclose(content) -> None:
    closer = getattr(content, "aclose", None)
    if closer is not None:
        await closer()
