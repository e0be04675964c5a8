"""The tenant's webhook endpoint: its one validation, its services, and events out.

An event is stored as a `WebhookDelivery` (body and id fixed) in the transaction that caused it,
and sent by Celery after commit (billing.webhook_delivery), so an event is neither sent for a
change that rolled back nor lost when the worker is down: the beat's sweep sends what is due.

Signed as Stripe signs: `X-Platform-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>">`, one `v1` per secret in use (two for 24 hours after a roll).
"""

import hashlib
import hmac
import ipaddress
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from billing.models import WebhookDelivery, WebhookEndpoint
from saas_platform.addresses import is_public_address
from tenants.models import ApiKey

SIGNATURE_HEADER = "X-Platform-Signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 # nosec B105: a prefix, not a secret
# The old secret keeps signing beside the new one this long after a roll.
ROLL_OVERLAP = timedelta(hours=24)

EVENT_TYPES = (
    "budget.threshold_reached",
    "credits.balance_low",
    "invoice.finalized",
    "apikey.expiring",
    "webhook.test",
)
URL_MAX_LENGTH = 2000
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    event_types: list[str]


def _refuse(field: str, message: str) -> ValidationError:
    return ValidationError({field: message}, code="invalid_webhook")


def validate_webhook_config(config: WebhookConfig) -> None:
    """The one rule for an endpoint, used by the portal and the admin. The URL is the tenant's
    input and the platform connects to it, so: https only (http with WEBHOOK_ALLOW_HTTP, for
    development), a host, no credentials or fragment, and a literal address must be public
    (unless WEBHOOK_ALLOW_PRIVATE). Host names are checked again at every delivery, on the
    address actually connected to."""
    url = config.url
    if not url or len(url) > URL_MAX_LENGTH:
        raise _refuse("url", f"Enter the receiver's URL (at most {URL_MAX_LENGTH} characters).")
    if _UNSAFE.search(url):
        raise _refuse("url", "The URL must not contain spaces, control characters or '\\'.")
    parts = urlsplit(url)
    schemes = ("https", "http") if settings.WEBHOOK_ALLOW_HTTP else ("https",)
    if parts.scheme.lower() not in schemes:
        raise _refuse("url", "The URL must start with https://.")
    if "@" in parts.netloc:
        raise _refuse("url", "The URL must not carry a user name or password.")
    if parts.fragment or url.endswith("#"):
        raise _refuse("url", "The URL must not have a fragment (#...).")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise _refuse("url", "The URL's port must be a number from 1 to 65535.") from None
    if not host:
        raise _refuse("url", "The URL needs a host name.")
    if not settings.WEBHOOK_ALLOW_PRIVATE and not _may_be_public(host):
        raise _refuse("url", "The URL's host must be a public address.")
    unknown = sorted(set(config.event_types) - set(EVENT_TYPES))
    if unknown:
        raise _refuse("event_types", f"Unknown event types: {', '.join(unknown)}.")


def _may_be_public(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.lower().rstrip(".") != "localhost"  # a name: checked when resolved
    return is_public_address(host)


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class IssuedEndpoint:
    """An endpoint and its secret, which is shown once."""

    endpoint: WebhookEndpoint
    secret: str


@transaction.atomic
def webhook_endpoint_set(*, tenant, url: str, event_types: list[str]) -> IssuedEndpoint | None:
    """Add the tenant's endpoint (returning it with its new secret) or change its URL and event
    types (None: the secret is unchanged). A changed endpoint is enabled again."""
    config = WebhookConfig(url=url.strip(), event_types=sorted(set(event_types)))
    validate_webhook_config(config)
    endpoint = WebhookEndpoint.objects.select_for_update().filter(tenant=tenant).first()
    if endpoint is None:
        endpoint = WebhookEndpoint.objects.create(
            tenant=tenant, url=config.url, event_types=config.event_types, secret=_new_secret()
        )
        audit_record(
            action="webhook.created",
            obj=endpoint,
            tenant=tenant,
            changes={"url": (None, endpoint.url), "event_types": (None, endpoint.event_types)},
        )
        return IssuedEndpoint(endpoint=endpoint, secret=endpoint.secret)
    before = {"url": endpoint.url, "event_types": endpoint.event_types, "enabled": endpoint.enabled}
    endpoint.url, endpoint.event_types = config.url, config.event_types
    endpoint.enabled, endpoint.disabled_at, endpoint.failing_since = True, None, None
    endpoint.save()
    after = {"url": endpoint.url, "event_types": endpoint.event_types, "enabled": True}
    changes = {name: (before[name], after[name]) for name in after if before[name] != after[name]}
    if changes:
        audit_record(action="webhook.changed", obj=endpoint, tenant=tenant, changes=changes)
    return None


@transaction.atomic
def webhook_endpoint_remove(*, tenant) -> None:
    endpoint = WebhookEndpoint.objects.filter(tenant=tenant).first()
    if endpoint is None:
        return
    audit_record(
        action="webhook.removed", obj=endpoint, tenant=tenant, changes={"url": (endpoint.url, None)}
    )
    endpoint.delete()


@transaction.atomic
def webhook_secret_roll(*, endpoint: WebhookEndpoint) -> str:
    """A new secret, returned once; the old one signs beside it for ROLL_OVERLAP."""
    endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = timezone.now() + ROLL_OVERLAP
    endpoint.secret = _new_secret()
    endpoint.save()
    # Never the secrets themselves: when the old one stops signing.
    audit_record(
        action="webhook.rolled",
        obj=endpoint,
        tenant=endpoint.tenant,
        changes={"previous_until": (None, endpoint.previous_secret_expires_at)},
    )
    return endpoint.secret


def signing_secrets(endpoint: WebhookEndpoint, moment: datetime) -> list[str]:
    found = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and moment < expires:
        found.append(endpoint.previous_secret)
    return found


def sign(secrets_in_use: list[str], body: bytes, timestamp: int) -> str:
    """The signature header's value for `body` sent at `timestamp` (Unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}"]
    for secret in secrets_in_use:
        parts.append("v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest())
    return ",".join(parts)


def _enqueue(delivery_id: int) -> None:
    # billing.tasks calls this module's services, so it is imported when first needed, as
    # models_mgmt.placements does with its load task.
    from billing.tasks import deliver_webhook

    deliver_webhook.delay(delivery_id)


def webhook_event_emit(
    *, tenant, event_type: str, data: dict, dedup_key: str | None = None
) -> WebhookDelivery | None:
    """Queue the event for the tenant's endpoint, if it has one that takes this type; sent
    after the caller's transaction commits. With `dedup_key`, an event already made under that
    key is not made again (None)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    endpoint = WebhookEndpoint.objects.filter(tenant=tenant).first()
    if endpoint is None or not endpoint.wants(event_type):
        return None
    now = timezone.now()
    event_id = "evt_" + uuid.uuid4().hex
    body = orjson.dumps(
        {
            "id": event_id,
            "type": event_type,
            "created": int(now.timestamp()),
            "tenant": tenant.slug,
            "data": data,
        }
    ).decode()
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(
                endpoint=endpoint, event_id=event_id, event_type=event_type,
                dedup_key=dedup_key, body=body, next_attempt_at=now,
            )  # fmt: skip
    except IntegrityError:
        if dedup_key and WebhookDelivery.objects.filter(dedup_key=dedup_key).exists():
            return None
        raise
    transaction.on_commit(lambda: _enqueue(delivery.pk))
    return delivery


@transaction.atomic
def webhook_delivery_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again (staff's resend): the same event id and body, due now."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        state=WebhookDelivery.State.PENDING, next_attempt_at=timezone.now()
    )
    audit_record(
        action="webhook.resent",
        obj=delivery,
        tenant=delivery.endpoint.tenant,
        changes={"state": (delivery.state, WebhookDelivery.State.PENDING)},
    )
    transaction.on_commit(lambda: _enqueue(delivery.pk))
    return delivery


def webhook_test_send(*, tenant) -> WebhookDelivery | None:
    """A `webhook.test` event to the tenant's endpoint (every enabled endpoint takes it)."""
    with transaction.atomic():
        return webhook_event_emit(
            tenant=tenant, event_type="webhook.test", data={"message": "A test event."}
        )


def apikeys_expiring_notify(*, now: datetime | None = None) -> int:
    """`apikey.expiring` for every live key that expires within WEBHOOK_KEY_EXPIRY_NOTICE_DAYS,
    once per key and expiry (beat runs it daily; a key given a new expiry is noticed again).
    Returns the events made."""
    now = now or timezone.now()
    horizon = now + timedelta(days=settings.WEBHOOK_KEY_EXPIRY_NOTICE_DAYS)
    keys = ApiKey.objects.select_related("tenant").filter(
        revoked_at__isnull=True, expires_at__gt=now, expires_at__lte=horizon,
        tenant__webhook__enabled=True,
    )  # fmt: skip
    made = 0
    for key in keys:
        data = {"key_prefix": key.display_prefix, "name": key.name,
                "expires_at": key.expires_at.isoformat()}  # fmt: skip
        with transaction.atomic():
            made += webhook_event_emit(
                tenant=key.tenant, event_type="apikey.expiring", data=data,
                dedup_key=f"apikey.expiring:{key.pk}:{int(key.expires_at.timestamp())}",
            ) is not None  # fmt: skip
    return made
