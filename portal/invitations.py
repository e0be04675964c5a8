"""The email a new member gets: a link to set their password (Django's reset token, so it
expires after PASSWORD_RESET_TIMEOUT and works once), or to sign in if they have an account."""

from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode


def invitation_send(request, *, membership, new_account: bool, invited_by) -> None:
    user = membership.user
    if new_account or not user.has_usable_password():
        path = reverse(
            "portal:password_reset_confirm",
            kwargs={
                "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
                "token": default_token_generator.make_token(user),
            },
        )
    else:
        path = reverse("portal:login")
    context = {
        "tenant": membership.tenant,
        "role": membership.get_role_display(),
        "invited_by": invited_by.get_full_name() or invited_by.get_username(),
        "link": request.build_absolute_uri(path),
        "new_account": new_account or not user.has_usable_password(),
        "username": user.get_username(),
    }
    subject = f"You have been added to {membership.tenant.name or membership.tenant.slug}"
    body = render_to_string("portal/emails/invitation.txt", context)
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [user.email])
