"""The refusals the gateway itself makes (the key, limit and engine refusals belong to the apps
that decide them: tenants.errors, gateway.admission, models_mgmt.engines)."""

from saas_platform.errors import PlatformError


class ModelNotFound(PlatformError):
    status = 404
    code = "model_not_found"

    def __init__(self, model_id: str):
        # The same answer whether the model does not exist or the tenant may not use it.
        super().__init__(
            f"The model '{model_id[:200]}' does not exist or you do not have access to it.",
            param="model",
        )


class MethodNotAllowed(PlatformError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str):
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}  # RFC 9110: a 405 names the methods that are allowed


class UnknownEndpoint(PlatformError):
    status = 404
    code = "unknown_url"


class DisallowedHost(PlatformError):
    status = 400
    code = "invalid_host"


class HttpsRequired(PlatformError):
    status = 403
    code = "https_required"
    error_type = "permission_error"
