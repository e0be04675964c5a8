"""Signing in and picking a tenant. Password change and reset are Django's own views with the
portal's templates (portal/urls.py)."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from portal.access import SESSION_TENANT, choose_tenant, memberships_of
from portal.forms import PortalSignInForm
from tenants.sso import logout_url, password_sign_in_refused


class LoginView(auth_views.LoginView):
    template_name = "portal/login.html"
    form_class = PortalSignInForm
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        return super().get_context_data(sso_enabled=settings.SSO_ENABLED, **kwargs)

    def form_valid(self, form):
        # A new sign-in picks its tenant afresh.
        self.request.session.pop(SESSION_TENANT, None)
        return super().form_valid(form)


def _safe_next(request, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if allowed and target.startswith("/portal/") else fallback


@login_required
@require_http_methods(["GET", "POST"])
def tenant_choose(request):
    memberships = list(memberships_of(request.user))
    if not memberships:
        return render(request, "portal/no_tenant.html", status=403)
    if request.method == "POST":
        try:
            tenant_id = int(request.POST.get("tenant", ""))
        except ValueError:
            tenant_id = None
        if tenant_id is not None and choose_tenant(request, tenant_id):
            return redirect(_safe_next(request, reverse("portal:overview")))
        messages.error(request, "Pick one of your tenants.")
    context = {
        "memberships": memberships,
        "current": request.session.get(SESSION_TENANT),
        "next": _safe_next(request, ""),
    }
    return render(request, "portal/tenant_choose.html", context)


class LogoutView(auth_views.LogoutView):
    """Ends the session here and, for a single sign-on session whose provider supports it, the
    provider's too (RP-initiated logout: the browser goes there, and comes back to sign-in)."""

    def post(self, request, *args, **kwargs):
        # Read before the session, which holds the ID token, ends. Back to SITE_URL's sign-in
        # page, the address registered at the provider (never the request's Host).
        return_to = f"{settings.SITE_URL.rstrip('/')}{reverse('portal:login')}"
        at_provider = logout_url(request, return_to=return_to)
        response = super().post(request, *args, **kwargs)
        return redirect(at_provider) if at_provider else response


def admin_logout(request, extra_context=None):
    """The admin's "Log out" (AdminSite.logout's signature): as the portal's sign-out, the
    provider's session included, then back to the admin's sign-in page."""
    return LogoutView.as_view(next_page="admin:login")(request)


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """A link sent before the member's tenant required single sign-on no longer works."""

    def get_user(self, uidb64):
        user = super().get_user(uidb64)
        return None if user is not None and password_sign_in_refused(user) else user
