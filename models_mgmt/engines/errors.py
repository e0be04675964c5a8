from saas_platform.errors import PlatformError


class EngineError(PlatformError):
    """The engine failed (5xx, bad answer, connection lost): 502 to the client."""

    status = 502
    code = "upstream_error"
    error_type = "api_error"


class EngineTimeout(EngineError):
    status = 504
    code = "upstream_timeout"


class EngineRejected(PlatformError):
    """The engine refused the request as invalid (its 4xx): the client's to fix."""

    status = 400
    code = "invalid_request_error"
