"""How a request body may arrive at Django: within a time limit (the gateway, gateway.http,
bounds its own bodies in time and size).

Django's ASGI handler reads the whole body (spooling it to disk past 2.5 MB) before any
middleware or view runs, and uvicorn sets no limit on how long that takes. A client that trickles
its body a byte at a time (slowloris) would hold the connection and its buffer for as long as it
likes. This ASGI wrapper sits in front of Django: past `REQUEST_BODY_TIMEOUT_SECONDS` the
request gets 408.

It tells Django the client went away (`http.disconnect`, so Django drops the request without a
response), then answers itself, in OpenAI's error shape, and closes the connection.
"""

import asyncio
import json

from django.conf import settings

from saas_platform.errors import PlatformError, RequestTimeout

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


class BodyGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.REQUEST_BODY_TIMEOUT_SECONDS
        complete = False
        refusal: PlatformError | None = None
        started = False

        async def guarded_receive():
            nonlocal complete, refusal
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
