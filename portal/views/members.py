"""Members of the tenant, for its owners: invite by email, change role, remove."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from portal.access import member_required
from portal.forms import InviteForm, RoleForm
from portal.invitations import invitation_send
from tenants import services
from tenants.errors import LastOwner
from tenants.models import Membership


def _members_page(request, form, *, status=200):
    memberships = request.tenant.memberships.select_related("user").order_by("user__email")
    context = {"form": form, "memberships": memberships, "roles": Membership.Role.choices}
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
    if request.tenant.memberships.filter(user__email__iexact=email).exists():
        form.add_error("email", "They are already a member.")
        return _members_page(request, form, status=400)
    membership, created = services.membership_invite(
        tenant=request.tenant, email=email, role=form.cleaned_data["role"]
    )
    invitation_send(request, membership=membership, new_account=created, invited_by=request.user)
    messages.success(request, f"Invited {email}; they have an email with a link to sign in.")
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
