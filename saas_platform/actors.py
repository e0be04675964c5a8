"""Who is acting, for the audit log: set once where a request or a command starts, read where a
service records what it changed, so no service takes an `actor` parameter.

A web request's actor is read from the request when a service asks (not when the middleware
runs): an API key's `request.user` is set by DRF inside the view, after every middleware. A
management command (saas_platform/cli.py) acts as `cli` with the operating-system user; anything
else outside a request (Celery tasks, beat) acts as `system`.
"""

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from saas_platform.addresses import client_address

USER_AGENT_LENGTH = 300


@dataclass(frozen=True)
class Actor:
    kind: str  # user, api_key, anonymous, cli, system
    name: str
    user_id: int | None = None
    os_user: str = ""
    address: str | None = None
    user_agent: str = ""


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME (some containers)
        return ""


def of_request(request, user=None) -> Actor:
    """The actor of a web request: its user (or `user`, for a sign-in not yet on the request),
    an API key, or anonymous; with the client's address and user agent."""
    user = user if user is not None else getattr(request, "user", None)
    where = {
        "address": client_address(request),
        "user_agent": request.headers.get("User-Agent", "")[:USER_AGENT_LENGTH],
    }
    api_key = getattr(user, "api_key", None)
    if api_key is not None:  # tenants.api_auth.ApiKeyUser
        return Actor(kind="api_key", name=api_key.display_prefix, **where)
    if user is not None and user.is_authenticated:
        return Actor(kind="user", name=user.get_username(), user_id=user.pk, **where)
    return Actor(kind="anonymous", name="anonymous", **where)


_current: ContextVar[Callable[[], Actor] | None] = ContextVar("audit_actor", default=None)


def current() -> Actor:
    source = _current.get()
    if source is None:
        return Actor(kind="system", name="system", os_user=os_user())
    return source()


@contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    token = _current.set(lambda: actor)
    try:
        yield actor
    finally:
        _current.reset(token)


def command_actor() -> Actor:
    return Actor(kind="cli", name="cli", os_user=os_user())


class ActorMiddleware:
    """Makes the request's user (read lazily, see above) the actor of what the request changes.
    After AuthenticationMiddleware. Sync and async, as the middleware around it are, so it
    adds no thread hop under ASGI."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        token = _current.set(lambda: of_request(request))
        try:
            return self.get_response(request)
        finally:
            _current.reset(token)

    async def __acall__(self, request):
        token = _current.set(lambda: of_request(request))
        try:
            return await self.get_response(request)
        finally:
            _current.reset(token)
