"""Emails to the platform's operators (OPERATOR_EMAILS, else the addresses in ADMINS), for
conditions someone must act on. Without any address the message is only logged."""

import logging
import smtplib

from django.conf import settings
from django.core.mail import send_mail

logger = logging.getLogger(__name__)


def operator_addresses() -> list[str]:
    return list(settings.OPERATOR_EMAILS or settings.ADMINS)


def operators_notify(*, subject: str, body: str) -> bool:
    """Log and email the message to the operators. False when a mail server refused it or
    could not be reached (logged), so the caller can try again later; True otherwise, also
    when no address is configured (nobody to email: a retry would change nothing)."""
    recipients = operator_addresses()
    logger.warning("operators: %s", subject)
    if not recipients:
        logger.warning("operators: not emailed: OPERATOR_EMAILS is not set")
        return True
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except (smtplib.SMTPException, OSError) as error:
        logger.error("operators: email %r not sent: %s", subject, error)
        return False
    return True
