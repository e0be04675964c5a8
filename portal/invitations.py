"""The email an invited person gets: a link to the invitation's page, on SITE_URL, where they
accept it signed in with an account of that address, or make one."""

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from saas_platform.site import absolute_url
from tenants.invitations import IssuedInvitation


def invitation_send(issued: IssuedInvitation, *, invited_by) -> None:
    invitation = issued.invitation
    tenant = invitation.tenant
    context = {
        "tenant": tenant,
        "role": invitation.get_role_display(),
        "invited_by": invited_by.get_full_name() or invited_by.get_username(),
        "link": absolute_url(reverse("portal:invitation", kwargs={"token": issued.token})),
        "expires_at": invitation.expires_at,
    }
    subject = f"You are invited to {tenant.name or tenant.slug}"
    body = render_to_string("portal/emails/invitation.txt", context)
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [invitation.email])
