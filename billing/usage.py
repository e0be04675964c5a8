"""Usage events and the recorders they are published to (the seed's UsageEvent, UsageRecorder
and NDJSONRecorder).

Publishing never blocks or fails a response: events go onto an in-process queue that a
background thread hands to every configured recorder, retrying a recorder that fails (with
backoff) and counting failures in metrics. The ledger's recorder (billing.ledger) is the
durable one. A recorder marked `fed_after_ledger` (the Kafka stream, billing.kafka) is not
published to: the ledger's drain feeds it the events it has stored.
"""

import asyncio
import fcntl
import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Protocol

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from saas_platform import metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UsageEvent:
    request_id: str
    tenant_id: str
    api_key_prefix: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    timestamp: int  # unix seconds, as the seed
    latency_ms: int
    status: int
    # "reported": the engine's own usage; "counted": the gateway counted the tokens itself.
    usage_source: str = "reported"
    endpoint: str = ""
    # Of the prompt tokens, those the engine served from its prompt cache (its
    # usage.prompt_tokens_details.cached_tokens), priced at the cached input price.
    cached_tokens: int = 0
    queue_ms: int = 0  # of latency_ms, the time waited for an engine slot (the fair queue)

    def to_dict(self) -> dict:
        return asdict(self)


class UsageRecorder(Protocol):
    def record(self, event: UsageEvent) -> None:
        """Store the event or raise; the publisher retries on any exception."""


class NDJSONRecorder:
    """Appends one JSON object per line. Each line is one write() on an O_APPEND descriptor under
    an exclusive lock, so lines from many processes never interleave."""

    def __init__(self, path: str | None = None):
        self.path = path or settings.USAGE_NDJSON_PATH

    def record(self, event: UsageEvent) -> None:
        line = (json.dumps(event.to_dict(), separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)  # closing releases the lock


def _fed_after_ledger(cls) -> bool:
    # Such a recorder (billing.kafka's) is fed by the ledger's drain with the events it stored,
    # never by a gateway.
    return bool(getattr(cls, "fed_after_ledger", False))


def configured_recorders() -> list[UsageRecorder]:
    """The recorders a gateway publishes to: USAGE_RECORDERS but those fed after the ledger, and
    the NDJSON file when USAGE_NDJSON_PATH is set."""
    classes = [import_string(path) for path in settings.USAGE_RECORDERS]
    recorders: list[UsageRecorder] = [cls() for cls in classes if not _fed_after_ledger(cls)]
    ndjson_paths = {r.path for r in recorders if isinstance(r, NDJSONRecorder)}
    if settings.USAGE_NDJSON_PATH and settings.USAGE_NDJSON_PATH not in ndjson_paths:
        recorders.append(NDJSONRecorder())
    return recorders


def recorders_after_ledger() -> list:
    """The recorders of USAGE_RECORDERS fed by the ledger's drain once it stored a batch; each has
    `record_many(events)`, returning the request ids it took."""
    recorders = [import_string(path)() for path in settings.USAGE_RECORDERS
                 if _fed_after_ledger(import_string(path))]  # fmt: skip
    if recorders and not settings.REDIS_URL:
        raise ImproperlyConfigured(
            "USAGE_RECORDERS names a recorder fed from the ledger's Redis stream "
            f"({type(recorders[0]).__name__}): set REDIS_URL"
        )
    return recorders


class UsagePublisher:
    """Hands events to the recorders. A recorder with an async `arecord` (the ledger's Redis
    stream) takes the event at once, before the response's last bytes leave, so a process killed
    right after answering loses nothing; if that fails or is slow, and for every other recorder,
    a background thread delivers it, retrying with backoff until the recorder takes it. No
    recorder holds up another."""

    MAX_BACKOFF_SECONDS = 30.0
    DIRECT_TIMEOUT_SECONDS = 0.5

    def __init__(self, recorders: list[UsageRecorder]):
        self._queues = [(recorder, queue.SimpleQueue()) for recorder in recorders]
        self._threads = [
            threading.Thread(target=self._run, args=(r, q), daemon=True, name="usage-publisher")
            for r, q in self._queues
        ]
        for thread in self._threads:
            thread.start()

    def queue_appends(self, pipe, event: UsageEvent) -> list[UsageRecorder]:
        """Queue the event on a Redis pipeline for each recorder that appends it to a stream
        (`queue_append`), so that it travels in the caller's round trip; returns those that
        queued it. Pass the ones whose append succeeded to `publish` as `recorded_by`."""
        return [
            recorder
            for recorder, _pending in self._queues
            if hasattr(recorder, "queue_append") and recorder.queue_append(pipe, event)
        ]

    async def publish(self, event: UsageEvent, *, recorded_by=()) -> None:
        """Hand the event to every recorder except those in `recorded_by` (which have it)."""
        metrics.USAGE_EVENTS.inc()
        for recorder, pending in self._queues:
            if recorder in recorded_by:
                continue
            record_now = getattr(recorder, "arecord", None)
            if record_now is not None:
                try:
                    async with asyncio.timeout(self.DIRECT_TIMEOUT_SECONDS):
                        await record_now(event)
                    continue
                except Exception as error:  # noqa: BLE001 - any failure: the retrying thread
                    name = type(recorder).__name__
                    metrics.USAGE_RECORDER_FAILURES.labels(recorder=name).inc()
                    logger.warning("usage recorder %s failed (%s); retrying in the background",
                                   name, type(error).__name__)  # fmt: skip
            pending.put(event)

    def pending(self) -> int:
        return sum(pending.qsize() for _recorder, pending in self._queues)

    def _run(self, recorder: UsageRecorder, pending: queue.SimpleQueue) -> None:
        name = type(recorder).__name__
        while True:
            event = pending.get()
            backoff = 0.1
            while True:
                try:
                    recorder.record(event)
                    break
                except Exception:
                    metrics.USAGE_RECORDER_FAILURES.labels(recorder=name).inc()
                    logger.exception("usage recorder %s failed; retrying in %.1fs", name, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, self.MAX_BACKOFF_SECONDS)


_publisher: UsagePublisher | None = None
_publisher_lock = threading.Lock()


def publisher() -> UsagePublisher:
    """The process's publisher, started on first use (after fork, in each server worker)."""
    global _publisher
    if _publisher is None:
        with _publisher_lock:
            if _publisher is None:
                _publisher = UsagePublisher(configured_recorders())
    return _publisher
