"""Single sign-on's pages: the start (a redirect to the provider), the callback, and the pages
that say why a sign-in was refused. The protocol is mozilla-django-oidc's views; these add
discovery, the refusal pages and the one report of each outcome (portal/sign_ins.py)."""

import logging

import jwt
import requests
from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.http import Http404
from django.shortcuts import render
from django.views.generic import View
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from portal.access import SESSION_TENANT
from portal.sign_ins import sign_in_failed, sign_in_succeeded
from tenants.sso import ProviderUnavailable, provider

logger = logging.getLogger(__name__)

# Why a sign-in was refused: the page's status and what it tells the person.
REFUSALS = {
    "no_access": (403, "No access here",
                  "Your account at the identity provider does not give you access to any tenant "
                  "of this platform. Ask your organisation's administrator to add you to one."),
    "unverified_email": (403, "Email address not verified",
                         "The identity provider sent no verified email address, which is how "
                         "your account here is found. Verify it there and sign in again."),
    "ambiguous_email": (403, "More than one account",
                        "More than one account here has your email address. Contact the "
                        "operator."),
    "inactive": (403, "Account disabled",
                 "Your account here is disabled. Contact the operator."),
    "invalid_callback": (400, "This sign-in cannot be completed",
                         "The answer from the identity provider is not one this browser asked "
                         "for, or it was used already. Start the sign-in again."),
    "provider_error": (502, "The identity provider refused the sign-in",
                       "The identity provider did not complete the sign-in. Try again; if it "
                       "keeps failing, contact the operator."),
    "provider_unavailable": (503, "The identity provider cannot be reached",
                             "Single sign-on is not available at the moment. Try again in a "
                             "few minutes."),
}  # fmt: skip


def _refused(request, reason: str):
    status, title, text = REFUSALS[reason]
    context = {"title": title, "text": text}
    return render(request, "portal/sso_refused.html", context, status=status)


class _SsoEnabled(View):
    def dispatch(self, request, *args, **kwargs):
        if not settings.SSO_ENABLED:
            raise Http404("single sign-on is not configured")
        return super().dispatch(request, *args, **kwargs)


class SsoLoginView(_SsoEnabled, OIDCAuthenticationRequestView):
    """Sends the browser to the provider (?next= a path here to come back to)."""

    def __init__(self, **kwargs):
        # The library reads its endpoint from settings here; ours comes from discovery, per
        # request (View.__init__ only: the library's would read settings we do not have).
        View.__init__(self, **kwargs)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID

    def get(self, request):
        try:
            self.OIDC_OP_AUTH_ENDPOINT = provider().authorization_endpoint
        except ProviderUnavailable:
            sign_in_failed(request, method="sso", reason="provider_unavailable")
            return _refused(request, "provider_unavailable")
        return super().get(request)


class SsoCallbackView(_SsoEnabled, OIDCAuthenticationCallbackView):
    """Where the provider sends the browser back. The library checks the state (known to this
    session and used once), the nonce and the PKCE verifier, and raises SuspiciousOperation on a
    replayed or forged answer: that is a refusal page here, never a 500."""

    def get(self, request):
        try:
            return super().get(request)
        except (SuspiciousOperation, jwt.InvalidTokenError) as error:
            return self._failed("invalid_callback", detail=str(error))
        except requests.RequestException as error:  # the token exchange refused, e.g. a reused code
            return self._failed("provider_error", detail=str(error))
        except ProviderUnavailable:
            return self._failed("provider_unavailable")

    def login_success(self):
        # A new sign-in picks its tenant afresh (as the password form does).
        self.request.session.pop(SESSION_TENANT, None)
        response = super().login_success()
        sign_in_succeeded(self.request, user=self.user, method="sso")
        return response

    def login_failure(self):
        reason = getattr(self.request, "sso_refusal", None)
        if reason is None:
            reason = "provider_error" if self.request.GET.get("error") else "invalid_callback"
        return self._failed(reason)

    def _failed(self, reason: str, detail: str = ""):
        if detail:
            logger.info("sso: callback refused: %s", detail)
        sign_in_failed(self.request, method="sso", reason=reason,
                       username=getattr(self.request, "sso_username", ""))  # fmt: skip
        return _refused(self.request, reason)
