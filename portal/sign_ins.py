"""The two places every sign-in ends, by password (portal and admin) or by single sign-on:
`sign_in_succeeded` and `sign_in_failed`. Each is called exactly once per attempt, so whatever
must happen for every sign-in (the log line now) is added here and nowhere else."""

import logging

from saas_platform.addresses import client_address

logger = logging.getLogger(__name__)


def sign_in_succeeded(request, *, user, method: str) -> None:
    """`user` signed in; `method` is "password" or "sso"."""
    logger.info(
        "sign-in: %s signed in (%s) from %s", user.get_username(), method, client_address(request)
    )


def sign_in_failed(request, *, method: str, reason: str, username: str = "") -> None:
    """A sign-in was refused: `reason` is a short code (invalid_login, sso_required, no_access,
    invalid_callback, provider_error, ...); `username` as typed or as the provider named them,
    when known. Never a password, code or token."""
    logger.warning(
        "sign-in: refused (%s, %s) for %r from %s",
        method,
        reason,
        username[:150],
        client_address(request),
    )
