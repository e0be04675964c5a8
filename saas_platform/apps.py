from django.apps import AppConfig


class SaasPlatformConfig(AppConfig):
    name = "saas_platform"

    def ready(self) -> None:
        from saas_platform import checks  # noqa: F401 - registers the deploy checks
