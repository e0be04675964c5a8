"""How a request body may arrive at Django: within a size and a time limit (the gateway,
gateway.http, bounds its own bodies).

Django's ASGI handler reads the whole body (spooling it to disk past FILE_UPLOAD_MAX_MEMORY_SIZE)
before any middleware or view runs, and uvicorn sets no limit on how big it is or how long it
takes. A client could send gigabytes to any page, signed in or not, or trickle a body a byte at a
time (slowloris) for as long as it likes. This ASGI wrapper sits in front of Django:

- a declared `Content-Length` above `REQUEST_MAX_BODY_BYTES` gets 413 before anything is read;
- a body without one (chunked) is counted as it arrives and gets 413 once it passes the limit;
- a body that has not fully arrived after `REQUEST_BODY_TIMEOUT_SECONDS` gets 408.

Once Django is reading, it is told the client went away (`http.disconnect`, so Django drops the
request without a response); the guard then answers itself, in OpenAI's error shape, and closes
the connection.
"""

import asyncio
import json

from django.conf import settings

from saas_platform.errors import PlatformError, RequestTimeout, RequestTooLarge

DISCONNECT = {"type": "http.disconnect"}


async def _answer(send, error: PlatformError) -> None:
    body = json.dumps(error.as_dict()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is never read: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request body is larger than {limit} bytes.")


def _declared_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The server (h11, httptools) has already refused a malformed one.
            return int(value) if value.isdigit() else None
    return None


class BodyGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.REQUEST_MAX_BODY_BYTES
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            return await _answer(send, _too_large(limit))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.REQUEST_BODY_TIMEOUT_SECONDS
        complete = False
        received = 0
        refusal: PlatformError | None = None
        started = False

        async def guarded_receive():
            nonlocal complete, received, refusal
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
                if received > limit:
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
            await _answer(send, refusal)
        return None
