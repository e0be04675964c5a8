"""The site's own address (`SITE_URL`), for the links the platform sends by email (password
resets, invitations). Links are never built from the request's `Host`: a client chooses that
header, and a reset link pointing at the client's host hands it the token."""

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def parse_site_url(name: str, value: str) -> str:
    """`scheme://host[:port]` (http or https, no path, query or fragment), without a trailing
    slash; ImproperlyConfigured naming `name` otherwise."""
    parts = urlsplit(value.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ImproperlyConfigured(
            f"{name} must be the site's address as https://host[:port], got {value!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"


def absolute_url(path: str) -> str:
    """The address of `path` (from reverse()) on this site."""
    return settings.SITE_URL + path
