"""The one base exception for errors a client may see, and its OpenAI-shaped rendering.

Every app raises subclasses with a stable `code`; the API turns any of them into
`{"error": {"message", "type", "code", "param"}}` with the right HTTP status.
"""

from django.http import JsonResponse
from django.views import defaults


class PlatformError(Exception):
    status = 400
    code = "invalid_request_error"
    error_type = "invalid_request_error"
    # Seconds a client should wait before trying again (sent as Retry-After), where it helps.
    retry_after: int | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def as_dict(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "code": self.code,
                "param": self.param,
            }
        }


class AuthenticationFailed(PlatformError):
    status = 401
    code = "invalid_api_key"
    error_type = "authentication_error"


class PermissionDenied(PlatformError):
    status = 403
    code = "permission_denied"
    error_type = "permission_error"


class RateLimited(PlatformError):
    """429 with Retry-After, as Zulip's RateLimitedError."""

    status = 429
    code = "rate_limit_exceeded"
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


def error_response(error: PlatformError) -> JsonResponse:
    response = JsonResponse(error.as_dict(), status=error.status)
    for name, value in error.headers().items():
        response[name] = value
    return response


class RequestTimeout(PlatformError):
    status = 408
    code = "request_timeout"


class RequestTooLarge(PlatformError):
    status = 413
    code = "request_too_large"


class ServiceUnavailable(PlatformError):
    status = 503
    code = "service_unavailable"
    error_type = "server_error"
    retry_after = 1


class ServerError(PlatformError):
    status = 500
    code = "server_error"
    error_type = "server_error"


class NotFound(PlatformError):
    status = 404
    code = "unknown_url"


class BadRequest(PlatformError):
    status = 400
    code = "bad_request"


# Django's error pages (urls.py's handler400/403/404/500): on the management API, whose
# clients are programs, every one is OpenAI-shaped JSON like the API's own errors; people get
# Django's pages everywhere else.


def _is_api(request) -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def bad_request(request, exception=None):
    if _is_api(request):
        return error_response(BadRequest("The request could not be understood."))
    return defaults.bad_request(request, exception)


def permission_denied(request, exception=None):
    if _is_api(request):
        return error_response(PermissionDenied("You may not do this."))
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception=None):
    if _is_api(request):
        return error_response(
            # The path is not repeated: it may name another tenant's object (a probe).
            NotFound("Unknown URL (see /api/schema for this API's paths).")
        )
    return defaults.page_not_found(request, exception)


def server_error(request, *args, **kwargs):
    if _is_api(request):
        return error_response(ServerError("The server had an error processing your request."))
    return defaults.server_error(request, *args, **kwargs)
