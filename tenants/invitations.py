"""Invitations to a tenant: an owner offers a membership to an email address, and only the
person who receives the link, signed in with an account of that address (or making one there),
turns it into a membership. Inviting an existing account's address used to make it a member at
once, the operator's superuser's too.

The link carries a random token; only its SHA-256 is stored. It works once, for
PASSWORD_RESET_TIMEOUT, and a new invitation to the same address replaces an open one. Staff
accounts are never invited (they are the operator's: the admin adds them).
"""

import hashlib
import logging
import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from tenants.errors import (
    AlreadyMember,
    InvitationForSomeoneElse,
    InvitationNotOpen,
    StaffNotInvitable,
)
from tenants.models import Invitation, Membership, Tenant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssuedInvitation:
    """A new invitation. `token` (for the link) exists only here: it is never stored."""

    invitation: Invitation
    token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _accounts_of(email: str):
    return get_user_model()._default_manager.filter(email__iexact=email)


def _is_staff(user) -> bool:
    return user.is_staff or user.is_superuser


def invitation_for_token(token: str) -> Invitation:
    """The open invitation this link's token names, or InvitationNotOpen."""
    invitation = (
        Invitation.objects.select_related("tenant")
        .open_at(timezone.now())
        .filter(digest=_digest(token))
        .first()
    )
    if invitation is None:
        raise InvitationNotOpen()
    return invitation


@transaction.atomic
def invitation_create(
    *, tenant: Tenant, email: str, role: str = Membership.Role.MEMBER, invited_by=None
) -> IssuedInvitation:
    """Offer `role` in `tenant` to `email` (sending the link is the caller's). Refused for an
    address that is already a member or belongs to a staff account."""
    email = get_user_model().objects.normalize_email(email.strip())
    accounts = list(_accounts_of(email))
    if any(_is_staff(user) for user in accounts):
        raise StaffNotInvitable()
    if tenant.memberships.filter(user__in=accounts).exists():
        raise AlreadyMember()
    tenant.invitations.filter(email__iexact=email, accepted_at__isnull=True).delete()
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        tenant=tenant, email=email, role=role, digest=_digest(token), invited_by=invited_by
    )
    audit_record(
        action="member.invited",
        obj=invitation,
        changes={"email": (None, email), "role": (None, role)},
    )
    logger.info("invitation to %s created (%s)", tenant.slug, invitation.pk)
    return IssuedInvitation(invitation=invitation, token=token)


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user) -> Membership:
    """Make `user` a member as the invitation says. The user's email must be the invited
    address, and the invitation still open (checked again under a row lock, so a link used
    twice at once makes one membership). An existing membership keeps its role."""
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if not locked.is_open_at(timezone.now()):
        raise InvitationNotOpen()
    if (user.email or "").lower() != locked.email.lower():
        raise InvitationForSomeoneElse(locked.email)
    if _is_staff(user):
        raise StaffNotInvitable()
    membership, created = Membership.objects.get_or_create(
        tenant=locked.tenant, user=user, defaults={"role": locked.role}
    )
    Invitation.objects.filter(pk=locked.pk).update(accepted_at=timezone.now(), accepted_by=user)
    audit_record(
        action="member.joined",
        obj=membership,
        changes={
            "role": (None, membership.role) if created else (membership.role,) * 2,
            "invitation": (None, locked.pk),
        },
    )
    logger.info("invitation to %s accepted by user %s", locked.tenant.slug, user.pk)
    return membership


def invitation_account_exists(invitation: Invitation) -> bool:
    """Whether the invited address already has an account (then it signs in to accept)."""
    return _accounts_of(invitation.email).exists()


@transaction.atomic
def invitation_accept_new_account(*, invitation: Invitation, password: str) -> Membership:
    """Make an account for the invited address (username: the address, lower-cased) with this
    password, and accept the invitation with it."""
    if invitation_account_exists(invitation):
        raise InvitationForSomeoneElse(invitation.email)
    try:
        with transaction.atomic():
            user = get_user_model().objects.create_user(
                username=invitation.email.lower(), email=invitation.email, password=password
            )
    except IntegrityError:  # the user name is someone else's
        raise InvitationForSomeoneElse(invitation.email) from None
    return invitation_accept(invitation=invitation, user=user)


@transaction.atomic
def invitation_cancel(*, invitation: Invitation) -> None:
    audit_record(
        action="invitation.cancelled", obj=invitation, changes={"email": (invitation.email, None)}
    )
    invitation.delete()
