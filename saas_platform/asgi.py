"""The ASGI application: the inference API (/v1/) through a lean middleware chain, everything
else (admin, portal, management API) through the full one.

Django runs each synchronous-style middleware (sessions, CSRF, auth, messages...) on the one
thread that sync code shares, a hop there and back per middleware and request; the gateway needs
none of them (it authenticates by API key, its views are CSRF-exempt and never use sessions).
"""

import asyncio
import os
from contextlib import closing

from django.conf import settings
from django.core import signals
from django.core.asgi import get_asgi_application
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix

from saas_platform.body_guard import BodyGuard

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas_platform.settings")

django_application = get_asgi_application()  # sets Django up


class _Processed(Exception):
    """Ends the task group (and its disconnect listener) once the response is sent."""


class GatewayHandler(ASGIHandler):
    """Django's ASGI handler with GATEWAY_MIDDLEWARE instead of MIDDLEWARE, and no thread per
    request.

    Django's handler opens a ThreadSensitiveContext for each request (a new one-thread executor,
    started and shut down per request) and runs the request_started and request_finished
    receivers (close_old_connections, reset_queries, reset_urlconf: all synchronous) on that
    thread, two hops per request. Nothing on /v1/ uses a database connection on the event loop's
    thread (lookups run in the pool, `saas_platform.threads`), so those receivers have nothing to
    close there: they run inline, which is what they cost in a WSGI server. `handle` is
    Django 6's, less the hops.
    """

    def load_middleware(self, is_async=False):
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.GATEWAY_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                await self.send_response(error_response, send)
                error_response.close()
                return
            response = None
            try:
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self.listen_for_disconnect(receive))
                        response = await self.run_get_response(request)
                        await self.send_response(response, send)
                        raise _Processed
                except* (_Processed, RequestAborted):
                    pass
            except BaseExceptionGroup as group_error:  # as Django: one error is raised as itself
                if len(group_error.exceptions) == 1:
                    raise group_error.exceptions[0] from None
                raise
            if response is None:
                signals.request_finished.send(sender=self.__class__)
            else:
                response.close()  # sends request_finished


gateway_application = GatewayHandler()


async def route(scope, receive, send):
    if scope["type"] == "http" and scope["path"].startswith("/v1/"):
        await gateway_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)


# Bodies arrive in bounded time and, on /v1/, bounded size, before Django reads them.
application = BodyGuard(route)
