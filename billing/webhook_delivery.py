"""Sending webhook deliveries: one attempt at a time, recorded, retried with backoff.

The URL is the tenant's, so every attempt resolves its host, refuses it unless every address is
public (WEBHOOK_ALLOW_PRIVATE lets tests use loopback), and connects to the address it checked:
the request goes to that IP with the original Host header and TLS server name, so a DNS answer
that changes between check and connect (rebinding) is never used. No proxy from the
environment, no redirects followed (a 3xx is a failed attempt).

An attempt claims its delivery by moving `next_attempt_at` past the attempt's timeout in a short
transaction, so two workers never send the same delivery at once and no lock is held while the
receiver answers.
"""

import logging
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from billing.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from billing.webhooks import SIGNATURE_HEADER, sign, signing_secrets
from saas_platform.addresses import is_public_address
from tenants.models import Membership

logger = logging.getLogger(__name__)

RESPONSE_HEAD_BYTES = 500
USER_AGENT = "platform-webhooks/1"


class Refused(Exception):
    """The receiver's address may not be connected to; the attempt fails without sending."""


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str
    response_head: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _checked_addresses(host: str, port: int) -> list[str]:
    """The addresses to connect to for `host`: every address it resolves to must be public."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise Refused(f"{host} does not resolve: {error}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in found))
    if not addresses:
        raise Refused(f"{host} does not resolve")
    if not settings.WEBHOOK_ALLOW_PRIVATE:
        for address in addresses:
            if not is_public_address(address):
                raise Refused(f"{host} resolves to {address}, which is not a public address")
    return addresses


def _verify():
    # Receivers' certificates are checked against the public CAs (certifi's, httpx's default),
    # or WEBHOOK_CA_BUNDLE's for a development CA.
    if settings.WEBHOOK_CA_BUNDLE:
        return ssl.create_default_context(cafile=settings.WEBHOOK_CA_BUNDLE)
    return True


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST to a checked address of the URL's host (the next one when one does not connect):
    the status and the first bytes of the answer."""
    target = httpx.URL(url)
    port = target.port or (443 if target.scheme == "https" else 80)
    addresses = _checked_addresses(target.host, port)
    headers = {**headers, "Host": target.netloc.decode("ascii")}
    # The TLS name and the certificate check are the URL's host, not the address.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    with httpx.Client(
        timeout=settings.WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False,
        verify=_verify(),
    ) as client:  # fmt: skip
        for index, address in enumerate(addresses):
            request = client.build_request(
                "POST", target.copy_with(host=address), content=body, headers=headers,
                extensions=extensions,
            )  # fmt: skip
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise
                continue
            try:
                stream = response.extensions.get("network_stream")
                peer = stream.get_extra_info("server_addr") if stream is not None else None
                if peer and peer[0] != address:
                    raise Refused(f"connected to {peer[0]}, not the checked {address}")
                head = b""
                for chunk in response.iter_bytes():
                    head += chunk
                    if len(head) >= RESPONSE_HEAD_BYTES:
                        break
            finally:
                response.close()
            return response.status_code, head[:RESPONSE_HEAD_BYTES]
    raise Refused(f"{target.host} has no address to connect to")  # not reached: one at least


def _send(delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> Outcome:
    body = delivery.body.encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(signing_secrets(endpoint, timezone.now()), body, timestamp),
        "X-Platform-Event-Id": delivery.event_id,
    }
    started = time.monotonic()
    try:
        status_code, head = _post(endpoint.url, body, headers)
    except Refused as error:
        return Outcome(None, f"refused: {error}"[:300], "", _ms(started))
    except httpx.HTTPError as error:
        return Outcome(None, f"{type(error).__name__}: {error}"[:300], "", _ms(started))
    text = head.decode("utf-8", "replace")[:RESPONSE_HEAD_BYTES]
    return Outcome(status_code, "", text, _ms(started))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _claim(delivery_id: int) -> WebhookDelivery | None:
    """The delivery, if it is pending and due, with `next_attempt_at` moved past this
    attempt's timeout so no other worker takes it meanwhile."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .select_related("endpoint", "endpoint__tenant")
            .filter(pk=delivery_id, state=WebhookDelivery.State.PENDING)
            .first()
        )
        if delivery is None or (delivery.next_attempt_at and delivery.next_attempt_at > now):
            return None
        lease = timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS * 2 + 5)
        delivery.next_attempt_at = now + lease
        delivery.save(update_fields=["next_attempt_at"])
        return delivery


def retry_delay(failed_attempts: int) -> float:
    """Seconds before the next attempt after `failed_attempts` failures: doubling from
    WEBHOOK_RETRY_BASE_SECONDS, at most an hour."""
    return min(settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (failed_attempts - 1), 3600.0)


def webhook_deliver(*, delivery_id: int) -> float | None:
    """One attempt at the delivery, if it is due; recorded whatever happens. Returns the
    seconds until the next attempt when it must be tried again, else None."""
    delivery = _claim(delivery_id)
    if delivery is None:
        return None
    endpoint = delivery.endpoint
    if not endpoint.enabled:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(state=WebhookDelivery.State.FAILED)
        return None
    outcome = _send(delivery, endpoint)
    return _record(delivery, endpoint, outcome)


@transaction.atomic
def _record(delivery: WebhookDelivery, endpoint: WebhookEndpoint, outcome: Outcome):
    now = timezone.now()
    WebhookAttempt.objects.create(
        delivery=delivery, attempted_at=now, duration_ms=outcome.duration_ms,
        status_code=outcome.status_code, error=outcome.error,
        response_head=outcome.response_head,
    )  # fmt: skip
    if outcome.ok:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            state=WebhookDelivery.State.DELIVERED, delivered_at=now, next_attempt_at=None
        )
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=None)
        return None
    _endpoint_failed(endpoint, now)
    failures = delivery.attempts.count()
    delay = retry_delay(failures)
    gives_up = delivery.created_at + timedelta(hours=settings.WEBHOOK_RETRY_HOURS)
    if now + timedelta(seconds=delay) > gives_up:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            state=WebhookDelivery.State.FAILED, next_attempt_at=None
        )
        return None
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=now + timedelta(seconds=delay)
    )
    return delay


def _endpoint_failed(endpoint: WebhookEndpoint, now) -> None:
    """Note the failure; an endpoint failing for WEBHOOK_DISABLE_AFTER_DAYS is disabled and
    the tenant's owners are told."""
    endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    if endpoint.failing_since is None:
        endpoint.failing_since = now
        endpoint.save(update_fields=["failing_since"])
        return
    if not endpoint.enabled:
        return
    if now - endpoint.failing_since < timedelta(days=settings.WEBHOOK_DISABLE_AFTER_DAYS):
        return
    endpoint.enabled, endpoint.disabled_at = False, now
    endpoint.save(update_fields=["enabled", "disabled_at"])
    tenant = endpoint.tenant
    subject = f"Webhook endpoint disabled for {tenant.name or tenant.slug}"
    body = (
        f"Deliveries to {endpoint.url} have failed since {endpoint.failing_since:%Y-%m-%d %H:%M} "
        "UTC, so the endpoint is disabled and no more events are sent to it. Fix the receiver, "
        "then save the endpoint again in the portal to enable it."
    )
    transaction.on_commit(lambda: owners_email(tenant=tenant, subject=subject, body=body))


def owner_addresses(tenant) -> list[str]:
    return sorted(
        Membership.objects.filter(tenant=tenant, role=Membership.Role.OWNER)
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )


def owners_email(*, tenant, subject: str, body: str) -> bool:
    """Email the tenant's owners; False (logged) when the mail server refused or is away."""
    recipients = owner_addresses(tenant)
    if not recipients:
        return True
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except (smtplib.SMTPException, OSError) as error:
        logger.error("owners of %s not emailed %r: %s", tenant.slug, subject, error)
        return False
    return True


def webhooks_due(*, limit: int = 500) -> list[int]:
    """Pending deliveries whose attempt is due: the sweep that sends what a lost task (a worker
    restarted, a broker that dropped the message) did not."""
    return list(
        WebhookDelivery.objects.filter(
            state=WebhookDelivery.State.PENDING, next_attempt_at__lte=timezone.now()
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
