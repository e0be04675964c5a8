"""An invitation's page, reached from its emailed link: the person accepts it signed in with an
account of the invited address, or makes one there. Nothing changes before they accept."""

from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.forms import SetPasswordForm
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods

from portal.access import choose_tenant
from tenants import invitations
from tenants.errors import InvitationNotOpen, InvitationRefused

# The account a new member makes is signed in with the project's password backend (the
# lockout backend, first in AUTHENTICATION_BACKENDS, authenticates nothing itself).
SIGN_IN_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _joined(request, membership):
    choose_tenant(request, membership.tenant_id)
    tenant = membership.tenant
    messages.success(request, f"You are now a member of {tenant.name or tenant.slug}.")
    return redirect("portal:overview")


def _new_account_form(invitation, data=None) -> SetPasswordForm:
    # An unsaved account: the password validators compare the password with its names.
    user = get_user_model()(username=invitation.email.lower(), email=invitation.email)
    return SetPasswordForm(user, data)


@require_http_methods(["GET", "POST"])
def invitation_accept(request, token: str):
    try:
        invitation = invitations.invitation_for_token(token)
    except InvitationNotOpen as error:
        return render(request, "portal/invitation.html", {"refusal": error.message}, status=404)
    context = {"invitation": invitation}
    if request.user.is_authenticated:
        if request.method == "POST":
            try:
                membership = invitations.invitation_accept(invitation=invitation, user=request.user)
            except InvitationRefused as error:
                context["refusal"] = error.message
                return render(request, "portal/invitation.html", context, status=error.status)
            return _joined(request, membership)
        return render(request, "portal/invitation.html", context)
    if invitations.invitation_account_exists(invitation):
        query = urlencode({"next": request.get_full_path()})
        context["sign_in_url"] = f"{reverse('portal:login')}?{query}"
        return render(request, "portal/invitation.html", context)
    form = _new_account_form(invitation, request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            membership = invitations.invitation_accept_new_account(
                invitation=invitation, password=form.cleaned_data["new_password1"]
            )
        except InvitationRefused as error:
            context["refusal"] = error.message
            return render(request, "portal/invitation.html", context, status=error.status)
        login(request, membership.user, backend=SIGN_IN_BACKEND)
        return _joined(request, membership)
    context["form"] = form
    status = 400 if form.is_bound else 200
    return render(request, "portal/invitation.html", context, status=status)
