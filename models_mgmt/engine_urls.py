"""The rule for an engine's base URL, the one address the gateway sends tenants' requests to.

Only staff set it (the `models register` command, the admin). Operators run engines on private
addresses and single-label host names (`http://gpu-1:8000/v1`), so neither is refused; what is
refused is anything that is not plainly "this scheme, this host, this path": another scheme
(file:, gopher:, ...), no host, credentials in the URL (they would be logged and listed), a
query or fragment (the gateway appends paths such as /chat/completions to it).
"""

import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

SCHEMES = ("http", "https")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+\]$")
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\]")


def _refuse(value: str, why: str) -> ValidationError:
    return ValidationError(
        f"{value[:200]!r} is not an engine base URL: {why}. "
        "Use http:// or https://, a host, an optional port and path, e.g. http://gpu-1:8000/v1.",
        code="invalid_engine_url",
    )


def validate_engine_base_url(value: str) -> None:
    """Raise ValidationError (one clear message) unless `value` is an http(s) URL with a host
    and no credentials, query or fragment. The empty string is allowed: engines that need no URL
    (local, process) have none."""
    if not value:
        return
    if _UNSAFE.search(value):
        raise _refuse(value, "it contains whitespace, control characters or backslashes")
    parts = urlsplit(value)
    if parts.scheme.lower() not in SCHEMES:
        raise _refuse(value, f"the scheme must be http or https, not {parts.scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise _refuse(value, "it must not carry a user name or password")
    if "#" in value:
        raise _refuse(value, "it must not have a fragment (#...)")
    if "?" in value:
        raise _refuse(value, "it must not have a query (?...)")
    host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
    if not host or not (_HOSTNAME.match(host) or _IPV6.match(host)):
        raise _refuse(value, "it needs a host name or address")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise _refuse(value, "the port must be a number from 0 to 65535") from None
