"""The server's HTTP/1.1 protocol: uvicorn's httptools protocol with a deadline for each request
head and a cap on connections per worker process. The server command selects it
(`--http saas_platform.http_protocol:BoundedHttpToolsProtocol`: the Makefile's `serve` and
tests/servers.py's `gateway_command`).

uvicorn bounds the idle time between keep-alive requests (`timeout_keep_alive`), but its timer is
cancelled by the first byte that arrives, and nothing bounds a connection before its first
request: a client that connects and sends nothing, or sends one header line every few seconds,
holds its connection (and a file descriptor) for ever, and a few thousand of them exhaust a
worker. Here a connection has `REQUEST_HEADER_TIMEOUT_SECONDS` from when it opens, and from the
end of each response, to deliver a complete request head; past it, it is closed (with 408 when
part of a head had arrived). uvicorn's keep-alive timer gets the same setting. Bodies have their
own limits (saas_platform/body_guard.py and gateway/http.py).

Past `MAX_CONNECTIONS_PER_WORKER` open connections (or requests in progress), a request is
answered 503 with `Retry-After` in OpenAI's error shape and its connection closed: uvicorn's
`--limit-concurrency` rule, with the platform's error instead of its plain-text one.

The settings are read from Django's (the module may be imported before the application is).
"""

import asyncio
import json
import os

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from saas_platform.errors import RequestTimeout, ServiceUnavailable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas_platform.settings")


def _response(status: bytes, error) -> bytes:
    """A whole HTTP/1.1 response carrying `error` in OpenAI's shape, closing the connection."""
    body = json.dumps(error.as_dict()).encode()
    head = [b"HTTP/1.1 " + status, b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(), b"connection: close"]  # fmt: skip
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_HEAD_TIMEOUT = _response(
    b"408 Request Timeout", RequestTimeout("The request head did not arrive in time.")
)


async def _busy(scope, receive, send) -> None:
    error = ServiceUnavailable("The server is at its connection limit; try again shortly.")
    body = json.dumps(error.as_dict()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(error.retry_after).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = settings.REQUEST_HEADER_TIMEOUT_SECONDS
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_started = False

    # --- the head's deadline ---------------------------------------------------------------

    def _await_head(self) -> None:
        self._cancel_head_deadline()
        self._head_started = False
        self._head_deadline = self.loop.call_later(
            settings.REQUEST_HEADER_TIMEOUT_SECONDS, self._head_timed_out
        )

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self._head_started:
            self.transport.write(_HEAD_TIMEOUT)
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        limit = settings.MAX_CONNECTIONS_PER_WORKER
        if len(self.connections) > limit or len(self.tasks) >= limit:
            # uvicorn's handler reads self.app for this one request.
            app, self.app = self.app, _busy
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A pipelined request already has its head; otherwise the next one starts its clock now
        # (this is also the keep-alive idle time, which uvicorn's timer stops bounding at the
        # first byte).
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._await_head()
