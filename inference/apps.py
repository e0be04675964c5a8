from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """The OpenAI-compatible endpoints; built in the gateway issue."""

    name = "inference"
