"""The ASGI application: the inference API (/v1/) through a lean middleware chain, everything
else (admin, portal, management API) through the full one.

Django runs each synchronous-style middleware (sessions, CSRF, auth, messages...) on the one
thread that sync code shares, a hop there and back per middleware and request; the gateway needs
none of them (it authenticates by API key, its views are CSRF-exempt and never use sessions).
"""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler

from saas_platform.body_guard import BodyGuard

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas_platform.settings")

django_application = get_asgi_application()  # sets Django up


class GatewayHandler(ASGIHandler):
    """Django's ASGI handler with GATEWAY_MIDDLEWARE instead of MIDDLEWARE."""

    def load_middleware(self, is_async=False):
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.GATEWAY_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full


gateway_application = GatewayHandler()


async def route(scope, receive, send):
    if scope["type"] == "http" and scope["path"].startswith("/v1/"):
        await gateway_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)


# Bodies arrive in bounded time and, on /v1/, bounded size, before Django reads them.
application = BodyGuard(route)
