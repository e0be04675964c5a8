"""API-key authentication for the tenant-scoped management API (Django REST framework), and the
handler that gives that API OpenAI's error shape.

The key is checked exactly as the gateway checks it (`services.tenant_for_key`): the same
refusals, codes and statuses (401 `invalid_api_key`, 403 `tenant_suspended`). A view that uses
`ApiKeyAuthentication` must also use `HasTenantKey` and look everything up through
`request.auth.tenant`, never by an id from the URL alone.
"""

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission

from saas_platform.errors import PlatformError, error_response
from tenants import apikeys, services

_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class ApiKeyUser(AnonymousUser):
    """`request.user` for a request made with an API key. It is deliberately not a Django user
    (no staff flag, no permissions, `is_authenticated` False), so a key can never pass a check
    meant for the operator's people; what the key may reach is `request.auth.tenant`."""

    def __init__(self, found: services.Authenticated):
        self.tenant = found.tenant
        self.api_key = found.api_key

    def __str__(self) -> str:
        return f"api key {self.api_key.display_prefix} of {self.tenant.slug}"


class KeyRejected(exceptions.AuthenticationFailed):
    """401 carrying the platform's reason; a DRF exception so DRF resets the request's user and
    adds WWW-Authenticate."""

    def __init__(self, error: PlatformError):
        super().__init__(error.message, code=error.code)
        self.error = error


class KeyRefused(exceptions.PermissionDenied):
    """A valid key that may not be used now (a suspended tenant): 403."""

    def __init__(self, error: PlatformError):
        super().__init__(error.message, code=error.code)
        self.error = error
        self.status_code = error.status


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer sk-...`: request.user is an `ApiKeyUser`, request.auth the
    `services.Authenticated` (tenant and key). A missing key is refused (401), not anonymous."""

    def authenticate(self, request):
        try:
            found = services.tenant_for_key(
                apikeys.bearer_key(request.headers.get("Authorization", ""))
            )
        except PlatformError as error:
            raise (KeyRejected if error.status == 401 else KeyRefused)(error) from None
        return ApiKeyUser(found), found

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class HasTenantKey(BasePermission):
    """Allows requests authenticated by `ApiKeyAuthentication` (of an active tenant)."""

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, services.Authenticated)


class IgnoreAcceptHeader(BaseContentNegotiation):
    """Every view of this API answers in one format, the one its URL names: a client sending
    `Accept: application/pdf` for a PDF, or `*/*`, must not get 406 from DRF's negotiation."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _from_drf(exc: exceptions.APIException) -> PlatformError:
    detail, param = exc.detail, None
    if isinstance(detail, dict) and detail:
        # A serializer's field errors: the first field is the `param`, as OpenAI names it.
        param, messages = next(iter(detail.items()))
        messages = messages if isinstance(messages, list) else [messages]
        message = f"{param}: {' '.join(str(m) for m in messages)}"
        param = None if param == "non_field_errors" else param
    elif isinstance(detail, list | dict):
        message = "; ".join(str(item) for item in detail)
    else:
        message = str(detail)
    error = PlatformError(message, code=exc.default_code, param=param)
    error.status = exc.status_code
    error.error_type = _ERROR_TYPES.get(exc.status_code, "invalid_request_error")
    return error


def _from_validation(exc: ValidationError) -> PlatformError:
    if hasattr(exc, "message_dict"):
        field, messages = next(iter(exc.message_dict.items()))
        return PlatformError(" ".join(messages), param=None if field == "__all__" else field)
    return PlatformError(" ".join(exc.messages))


def openai_exception_handler(exc, context):
    """DRF's exception handler for this API: platform errors and DRF's own (405, 404, ...) as
    `{"error": {"message", "type", "code", "param"}}`. Anything else is a bug and goes on to
    Django's 500 handling (None), which logs it."""
    if isinstance(exc, KeyRejected | KeyRefused):
        error = exc.error
    elif isinstance(exc, ValidationError):  # a service's validation, the one every path uses
        error = _from_validation(exc)
    elif isinstance(exc, PlatformError):
        error = exc
    elif isinstance(exc, exceptions.APIException):
        error = _from_drf(exc)
    else:
        return None
    response = error_response(error)
    if getattr(exc, "auth_header", None):
        response["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        response["Retry-After"] = str(int(exc.wait))
    return response
