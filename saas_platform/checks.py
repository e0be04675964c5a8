"""`manage.py check --deploy` findings of the platform's own settings."""

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def check_site_url(app_configs, **kwargs):
    if not settings.SITE_URL_IS_SET:
        return [
            Warning(
                f"SITE_URL is not set: links in emails point at {settings.SITE_URL}.",
                hint="Set SITE_URL to the address people reach the site at, e.g. "
                "https://portal.example.com.",
                id="saas_platform.W001",
            )
        ]
    if settings.HTTPS and not settings.SITE_URL.startswith("https://"):
        return [
            Warning(
                "SITE_URL is not https:// though HTTPS=1: emailed links would go over plain HTTP.",
                id="saas_platform.W002",
            )
        ]
    return []
