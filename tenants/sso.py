"""Single sign-on through the operator's OpenID Connect provider, on mozilla-django-oidc.

The library does the protocol: the authorization code flow, the state, nonce and PKCE checks,
the token exchange and the ID token's signature. This module adds what it lacks: discovery (the
endpoints from OIDC_ISSUER's /.well-known/openid-configuration, read lazily: a password sign-in
never waits on the provider), the ID token's issuer and audience, and our mapping of claims to
memberships (`tenants.services.membership_sync_from_claims`).
"""

import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from tenants import services
from tenants.models import Membership

logger = logging.getLogger(__name__)

# How long one process keeps the provider's discovery document.
DISCOVERY_SECONDS = 3600


class ProviderUnavailable(Exception):
    """The provider's discovery document could not be read (or is not the issuer's)."""


@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None


_cached: tuple[float, Provider] | None = None
_lock = threading.Lock()


def provider() -> Provider:
    """The provider's endpoints, from its discovery document (kept DISCOVERY_SECONDS)."""
    global _cached
    with _lock:
        if _cached is not None and _cached[0] > time.monotonic():
            return _cached[1]
        url = f"{settings.OIDC_ISSUER}/.well-known/openid-configuration"
        try:
            response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
            response.raise_for_status()
            document = response.json()
            found = Provider(
                issuer=document["issuer"],
                authorization_endpoint=document["authorization_endpoint"],
                token_endpoint=document["token_endpoint"],
                userinfo_endpoint=document["userinfo_endpoint"],
                jwks_uri=document["jwks_uri"],
                end_session_endpoint=document.get("end_session_endpoint"),
            )
        except (requests.RequestException, ValueError, KeyError, TypeError) as error:
            logger.warning("sso: discovery at %s failed: %s", url, error)
            raise ProviderUnavailable(str(error)) from None
        # OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer asked.
        if found.issuer.rstrip("/") != settings.OIDC_ISSUER:
            logger.warning("sso: %s names issuer %r", url, found.issuer)
            raise ProviderUnavailable(f"discovery names issuer {found.issuer!r}")
        _cached = (time.monotonic() + DISCOVERY_SECONDS, found)
        return found


def username_for(email: str, claims: dict | None = None) -> str:
    """New accounts are named by their email address (as people type it to sign in)."""
    return (email or "").strip().lower()[:150]


def password_sign_in_refused(user) -> bool:
    """Whether `user` belongs to a tenant that requires single sign-on: then no password
    sign-in and no password reset for them."""
    return Membership.objects.filter(user=user, tenant__sso_required=True).exists()


def logout_url(request, *, return_to: str) -> str | None:
    """The provider's RP-initiated logout for this session, coming back to `return_to` (an
    address the provider has registered for this client), or None when the session did not
    come from single sign-on or the provider has no end_session_endpoint. Read before the local
    session ends: it holds the ID token."""
    id_token = request.session.get("oidc_id_token")
    if not settings.SSO_ENABLED or not id_token:
        return None
    try:
        endpoint = provider().end_session_endpoint
    except ProviderUnavailable:
        return None
    if not endpoint:
        return None
    hint = {"id_token_hint": id_token, "client_id": settings.OIDC_CLIENT_ID}
    query = urlencode({**hint, "post_logout_redirect_uri": return_to})
    return f"{endpoint}?{query}"


class SsoBackend(OIDCAuthenticationBackend):
    """The authentication backend of the callback. Everything that stands between a token and a
    signed-in person is here; why a sign-in was refused is left on the request
    (`request.sso_refusal`, and who it was, `request.sso_username`) for the page that says
    so."""

    def __init__(self, *args, **kwargs):
        # The library reads every endpoint here, for every sign-in of any kind and every
        # session lookup; ours are properties that ask discovery only when used.
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        self.UserModel = get_user_model()

    @property
    def OIDC_OP_TOKEN_ENDPOINT(self) -> str:
        return provider().token_endpoint

    @property
    def OIDC_OP_USER_ENDPOINT(self) -> str:
        return provider().userinfo_endpoint

    @property
    def OIDC_OP_JWKS_ENDPOINT(self) -> str:
        return provider().jwks_uri

    def authenticate(self, request, **kwargs):
        # Only the callback carries a code; a password sign-in passes through untouched.
        if request is None or "code" not in request.GET or "username" in kwargs:
            return None
        return super().authenticate(request, **kwargs)

    def verify_token(self, token, **kwargs):
        payload = super().verify_token(token, **kwargs)
        # The library checks the signature and the nonce, not who issued the token or for whom.
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if str(payload.get("iss", "")).rstrip("/") != settings.OIDC_ISSUER:
            raise SuspiciousOperation("ID token from another issuer")
        if settings.OIDC_CLIENT_ID not in audiences:
            raise SuspiciousOperation("ID token for another client")
        return payload

    def verify_claims(self, claims) -> bool:
        # Accounts are found by email address: one the provider has not verified must not
        # match (and so take over) an existing account.
        if not claims.get("email") or claims.get("email_verified") is False:
            self.request.sso_refusal = "unverified_email"
            return False
        return True

    def filter_users_by_claims(self, claims):
        users = super().filter_users_by_claims(claims)
        if len(users) > 1:  # the library refuses then; say why
            self.request.sso_refusal = "ambiguous_email"
        return users

    def create_user(self, claims):
        # No account is kept for someone the claims give nothing here.
        with transaction.atomic():
            user = super().create_user(claims)
            admitted = self._admit(user, claims)
            if admitted is None:
                transaction.set_rollback(True)
        return admitted

    def update_user(self, user, claims):
        return self._admit(user, claims)

    def _admit(self, user, claims):
        self.request.sso_username = user.get_username()
        if not user.is_active:
            self.request.sso_refusal = "inactive"
            return None
        access = services.membership_sync_from_claims(user=user, claims=claims)
        if not access.grants_anything:
            self.request.sso_refusal = "no_access"
            return None
        return user
