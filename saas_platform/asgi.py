"""The ASGI application: `/v1/` is served by the gateway's own lean application
(gateway.app), everything else (admin, portal, management API, health, metrics) by Django, in
the same process and under the same server command.

Django's request handler, URL resolver and middleware cost more CPU per request than all the
gateway's own work, and the gateway needs none of them (it authenticates by API key and never
uses sessions, CSRF or templates).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas_platform.settings")

django_application = get_asgi_application()  # sets Django up, before the gateway is imported

from django.conf import settings  # noqa: E402
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware  # noqa: E402

from gateway.app import API_PREFIX  # noqa: E402
from gateway.app import application as gateway_application  # noqa: E402
from saas_platform.body_guard import BodyGuard  # noqa: E402

# Bodies reach Django within a size and a time limit (the gateway bounds its own).
guarded_django = BodyGuard(django_application)


async def _route(scope, receive, send):
    if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
        await gateway_application(scope, receive, send)
    else:
        await guarded_django(scope, receive, send)


# Forwarded headers are believed from TRUSTED_PROXIES only (saas_platform/addresses.py); the
# server runs with --no-proxy-headers, since uvicorn's own default trusts loopback.
application = (
    ProxyHeadersMiddleware(_route, trusted_hosts=[str(n) for n in settings.TRUSTED_PROXY_NETWORKS])
    if settings.TRUSTED_PROXY_NETWORKS
    else _route
)
