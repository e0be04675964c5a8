"""HTTP for the gateway, straight on ASGI: the request as the pipeline needs it, its body read
within a size and a time limit, and responses written as bytes.

No framework sits here on purpose: Django's handler, URL resolver and middleware cost more CPU
per request than everything else the gateway does (docs/benchmarks.md).
"""

import asyncio
import os
from collections.abc import Iterable

import orjson
from django.conf import settings

from saas_platform.errors import PlatformError, RequestTimeout, RequestTooLarge

Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"


class ClientGone(Exception):
    """The client closed the connection before its request was complete."""


def new_request_id() -> str:
    return f"req_{os.urandom(16).hex()}"  # as random as uuid4's hex, without building a UUID


class Request:
    """One HTTP request to /v1/: method, path, the headers the gateway reads, and its body."""

    __slots__ = ("_receive", "body", "client", "headers", "method", "path", "request_id",
                 "scheme")  # fmt: skip

    def __init__(self, scope, receive):
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        # The client's address as the server believes it (forwarded only by TRUSTED_PROXIES).
        self.client: str = (scope.get("client") or ("unknown", 0))[0]
        self.scheme: str = scope.get("scheme", "http")
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.request_id = new_request_id()
        self.body = b""
        self._receive = receive

    @property
    def host(self) -> str:
        return self.header(b"host")

    def header(self, name: bytes) -> str:
        return self.headers.get(name, b"").decode("latin-1")

    async def read_body(self) -> None:
        """Read the body: 413 past INFERENCE_MAX_BODY_BYTES (declared or counted, without
        reading the rest), 408 past REQUEST_BODY_TIMEOUT_SECONDS, so a slow or huge body cannot
        hold a connection and its buffer."""
        limit = settings.INFERENCE_MAX_BODY_BYTES
        declared = self.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
        parts, received = [], 0
        try:
            async with asyncio.timeout(settings.REQUEST_BODY_TIMEOUT_SECONDS):
                while True:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    if received > limit:
                        raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise RequestTimeout(
                "The request body did not arrive within "
                f"{settings.REQUEST_BODY_TIMEOUT_SECONDS} seconds."
            ) from None
        self.body = b"".join(parts)

    async def wait_for_disconnect(self) -> None:
        """Returns when the client has gone away (after the body has been read)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass


class TrackedSend:
    """The server's `send`, noting whether the response has started and has ended, and adding
    `headers` (HSTS) to the response's head."""

    __slots__ = ("_send", "complete", "headers", "started")

    def __init__(self, send, headers: Headers = ()):
        self._send = send
        self.headers = headers
        self.started = False
        self.complete = False

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self.headers:
                message["headers"] = [*message["headers"], *self.headers]
        elif not message.get("more_body", False):
            self.complete = True
        await self._send(message)


def _encoded(headers: Iterable[tuple[str, str]]) -> Headers:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def send_json(
    send, status: int, payload, headers: Iterable[tuple[str, str]] = (), *, close: bool = False
) -> None:
    body = orjson.dumps(payload)
    raw = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()),
           *_encoded(headers)]  # fmt: skip
    if close:
        # The rest of the body is never read: the connection cannot carry another request.
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send, error: PlatformError, headers: Iterable[tuple[str, str]] = (), *, close: bool = False
) -> None:
    """An error in OpenAI's shape, with its own headers (Retry-After, Allow) added."""
    await send_json(
        send, error.status, error.as_dict(), [*headers, *error.headers().items()], close=close
    )


class EventStream:
    """A server-sent-event response: headers once, then each event as it is produced. A send
    the client does not take within `write_timeout` (it stopped reading, so the server's
    buffer stays full) raises TimeoutError and marks the stream `stalled`."""

    def __init__(self, send, *, write_timeout: float):
        self._send = send
        self._write_timeout = write_timeout
        self.stalled = False

    async def start(self, headers: Iterable[tuple[str, str]]) -> None:
        raw = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no"), *_encoded(headers)]  # fmt: skip
        await self._send({"type": "http.response.start", "status": 200, "headers": raw})

    async def send(self, data: bytes) -> None:
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._send({"type": "http.response.body", "body": data, "more_body": True})
        except TimeoutError:
            self.stalled = True
            raise

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b""})
