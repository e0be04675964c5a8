"""Who may see which tenant in the portal. Every view is wrapped in `member_required`, which
puts the signed-in user's membership on the request; views then look every object up within
`request.tenant`, so another tenant's id is a 404, never a 403 that confirms it exists."""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode

from tenants.models import Membership

SESSION_TENANT = "portal_tenant_id"


def memberships_of(user):
    return (
        Membership.objects.filter(user=user)
        .select_related("tenant")
        .order_by("tenant__name", "tenant__slug")
    )


def current_membership(request) -> Membership | None:
    """The membership chosen in this session, or the only one the user has."""
    memberships = memberships_of(request.user)
    chosen = request.session.get(SESSION_TENANT)
    if chosen is not None:
        membership = memberships.filter(tenant_id=chosen).first()
        if membership is not None:
            return membership
    only = list(memberships[:2])
    if len(only) == 1:
        request.session[SESSION_TENANT] = only[0].tenant_id
        return only[0]
    return None


def choose_tenant(request, tenant_id: int) -> bool:
    if not memberships_of(request.user).filter(tenant_id=tenant_id).exists():
        return False
    request.session[SESSION_TENANT] = tenant_id
    return True


def member_required(view=None, *, owner: bool = False):
    """Signed in, a member of the tenant chosen for this session (owners only, if `owner`)."""

    def decorate(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            membership = current_membership(request)
            if membership is None:
                if memberships_of(request.user).exists():
                    query = urlencode({"next": request.get_full_path()})
                    return redirect(f"{reverse('portal:tenant_choose')}?{query}")
                return render(request, "portal/no_tenant.html", status=403)
            if owner and membership.role != Membership.Role.OWNER:
                raise PermissionDenied("Only the tenant's owners can do this.")
            request.membership = membership
            request.tenant = membership.tenant
            return view(request, *args, **kwargs)

        return wrapped

    return decorate(view) if view is not None else decorate
