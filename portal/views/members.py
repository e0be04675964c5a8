"""Members of the tenant, for its owners: invite by email (the person accepts from the emailed
link: portal/views/invitations.py), cancel an invitation, change role, remove."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from portal.access import member_required
from portal.forms import InviteForm, RoleForm
from portal.invitations import invitation_send
from tenants import invitations, services
from tenants.errors import InvitationRefused, LastOwner
from tenants.models import Invitation, Membership


def _members_page(request, form, *, status=200):
    memberships = request.tenant.memberships.select_related("user").order_by("user__email")
    pending = request.tenant.invitations.open_at(timezone.now()).order_by("email")
    context = {"form": form, "memberships": memberships, "roles": Membership.Role.choices,
               "invitations": pending}  # fmt: skip
    return render(request, "portal/members.html", context, status=status)


@require_http_methods(["GET", "POST"])
@member_required(owner=True)
def member_list(request):
    if request.method == "GET":
        return _members_page(request, InviteForm())
    form = InviteForm(request.POST)
    if not form.is_valid():
        return _members_page(request, form, status=400)
    email = form.cleaned_data["email"]
    try:
        issued = invitations.invitation_create(tenant=request.tenant, email=email,
                                               role=form.cleaned_data["role"],
                                               invited_by=request.user)  # fmt: skip
    except InvitationRefused as error:
        form.add_error("email", error.message)
        return _members_page(request, form, status=400)
    invitation_send(issued, invited_by=request.user)
    messages.success(request, f"Invited {email}: they join once they accept the emailed link.")
    return redirect("portal:members")


@require_POST
@member_required(owner=True)
def invitation_cancel(request, pk: int):
    invitation = get_object_or_404(Invitation, pk=pk, tenant=request.tenant,
                                   accepted_at__isnull=True)  # fmt: skip
    invitations.invitation_cancel(invitation=invitation)
    messages.success(request, f"The invitation to {invitation.email} is cancelled.")
    return redirect("portal:members")


def _tenant_membership(request, pk: int) -> Membership:
    return get_object_or_404(Membership.objects.select_related("user", "tenant"), pk=pk,
                             tenant=request.tenant)  # fmt: skip


@require_POST
@member_required(owner=True)
def member_role(request, pk: int):
    membership = _tenant_membership(request, pk)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Pick owner or member.")
        return redirect("portal:members")
    try:
        services.membership_set(tenant=request.tenant, user=membership.user,
                                role=form.cleaned_data["role"])  # fmt: skip
    except LastOwner as error:
        messages.error(request, error.message)
    else:
        role = Membership.Role(form.cleaned_data["role"]).label.lower()
        messages.success(request, f"{membership.user.email or membership.user} is now {role}.")
    return redirect("portal:members")


@require_POST
@member_required(owner=True)
def member_remove(request, pk: int):
    membership = _tenant_membership(request, pk)
    try:
        services.membership_remove(membership=membership)
    except LastOwner as error:
        messages.error(request, error.message)
        return redirect("portal:members")
    messages.success(request, f"Removed {membership.user.email or membership.user}.")
    if membership.user_id == request.user.id:
        return redirect("portal:tenant_choose")
    return redirect("portal:members")
