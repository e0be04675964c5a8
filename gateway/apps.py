from django.apps import AppConfig


class GatewayConfig(AppConfig):
    """The /v1/ path: one pipeline from the bearer key to the usage event (gateway.pipeline)."""

    name = "gateway"
