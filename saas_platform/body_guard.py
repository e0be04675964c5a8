"""How a request body may arrive: within a time limit, and for the inference API within its size.

Django's ASGI handler reads the whole body (spooling it to disk past 2.5 MB) before any
middleware or view runs, and uvicorn sets no limit on how long that takes. A client that trickles
its body a byte at a time (slowloris) would hold the connection and its buffer for as long as it
likes, and one that sends gigabytes would fill the disk before the view's 413. This ASGI wrapper
sits in front of Django: past `REQUEST_BODY_TIMEOUT_SECONDS` the request gets 408, and a /v1/
body larger than `INFERENCE_MAX_BODY_BYTES` (declared or counted) gets 413 without being read.

It tells Django the client went away (`http.disconnect`, so Django drops the request without a
response), then answers itself, in OpenAI's error shape, and closes the connection.
"""

import asyncio
import json
import uuid

from django.conf import settings

from saas_platform.errors import PlatformError

DISCONNECT = {"type": "http.disconnect"}


class RequestTimeout(PlatformError):
    status = 408
    code = "request_timeout"


class RequestTooLarge(PlatformError):
    status = 413
    code = "request_too_large"  # as inference.parsing's, which checks what reaches the view


def _declared_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


async def _answer(send, scope, error: PlatformError) -> None:
    body = json.dumps(error.as_dict()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is never read: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    if scope["path"].startswith("/v1/"):
        headers.append((b"x-request-id", f"req_{uuid.uuid4().hex}".encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request body is larger than {limit} bytes.")


class BodyGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.INFERENCE_MAX_BODY_BYTES if scope["path"].startswith("/v1/") else None
        declared = _declared_length(scope)
        if limit is not None and declared is not None and declared > limit:
            return await _answer(send, scope, _too_large(limit))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.REQUEST_BODY_TIMEOUT_SECONDS
        received = 0
        complete = False
        refusal: PlatformError | None = None
        started = False

        async def guarded_receive():
            nonlocal received, complete, refusal
            if refusal is not None:
                return DISCONNECT
            if complete:
                return await receive()  # Django waiting for the client to go away
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                refusal = RequestTimeout(
                    "The request body did not arrive within "
                    f"{settings.REQUEST_BODY_TIMEOUT_SECONDS} seconds."
                )
                return DISCONNECT
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    refusal = _too_large(limit)
                    return DISCONNECT
                complete = not message.get("more_body", False)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, guarded_receive, tracked_send)
        if refusal is not None and not started:
            await _answer(send, scope, refusal)
        return None
