"""Webhooks to the tenant's own endpoint, against a real HTTP receiver on loopback that verifies
every signature: retried with backoff until accepted, once per event id, every attempt
recorded; private addresses refused without WEBHOOK_ALLOW_PRIVATE; redirects not followed."""

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from billing import tasks
from billing.models import WebhookDelivery, WebhookEndpoint
from billing.webhook_delivery import webhook_deliver
from billing.webhooks import (
    apikeys_expiring_notify,
    webhook_endpoint_set,
    webhook_event_emit,
    webhook_secret_roll,
    webhook_test_send,
)
from tenants import services
from tests.fakes.webhook_receiver import localhost_certificate, signature_valid, start_receiver
from tests.gateway_server import gateway_env
from tests.redis_cluster import flush
from tests.servers import ROOT, celery_worker_command

BASE = 0.3  # seconds: the first retry's delay here


@pytest.fixture(scope="module")
def receiver():
    found, server = start_receiver()
    yield found
    server.shutdown()


@pytest.fixture
def loopback(settings, receiver):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_RETRY_BASE_SECONDS = BASE
    settings.WEBHOOK_TIMEOUT_SECONDS = 2
    receiver.reset()
    return receiver


def _endpoint(tenant, receiver, path="/hook", **options):
    issued = webhook_endpoint_set(tenant=tenant, url=receiver.url + path, event_types=[])
    receiver.reset(secret=issued.secret, **options)
    return issued


def _deliver_until_settled(delivery: WebhookDelivery, *, limit: float = 10) -> None:
    """What the Celery task's countdowns do: attempt again when each is due (and before, to
    show an early attempt does nothing)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        delivery.refresh_from_db()
        if delivery.state != WebhookDelivery.State.PENDING:
            return
        attempts = delivery.attempts.count()
        webhook_deliver(delivery_id=delivery.pk)
        if delivery.attempts.count() == attempts:  # not due yet: nothing was sent
            time.sleep(max((delivery.next_attempt_at - timezone.now()).total_seconds(), 0.01))
    raise AssertionError("the delivery did not settle")


def test_a_failing_receiver_gets_the_event_again_with_backoff_until_it_accepts_it_once(
    db, acme, loopback, django_capture_on_commit_callbacks
):
    _endpoint(acme, loopback, fail_first=2)

    with django_capture_on_commit_callbacks(execute=True):  # the task runs (eagerly) at commit
        delivery = webhook_test_send(tenant=acme)
    _deliver_until_settled(delivery)

    delivery.refresh_from_db()
    attempts = list(delivery.attempts.all())
    assert delivery.state == WebhookDelivery.State.DELIVERED
    assert [a.status_code for a in attempts] == [500, 500, 200]
    assert all(a.signed for a in loopback.arrivals)
    assert [a.event_id for a in loopback.arrivals] == [delivery.event_id] * 3
    assert list(loopback.accepted) == [delivery.event_id]  # one accepted delivery
    gaps = [b.at - a.at for a, b in zip(loopback.arrivals, loopback.arrivals[1:], strict=False)]
    assert gaps[0] >= BASE
    assert gaps[1] >= 2 * BASE
    assert attempts[0].response_head.startswith("not this time")
    assert len(attempts[0].response_head) == 500
    assert attempts[2].response_head == "accepted"
    assert attempts[2].duration_ms < 2000
    event = loopback.accepted[delivery.event_id]
    assert event["type"] == "webhook.test"
    assert event["tenant"] == "acme"
    assert set(event) == {"id", "type", "created", "tenant", "data"}

    # The beat's sweep and a second task for it send nothing more.
    tasks.sweep_events()
    assert webhook_deliver(delivery_id=delivery.pk) is None
    assert len(loopback.arrivals) == 3


def test_every_event_has_its_own_id_and_is_accepted_once(
    db, acme, loopback, django_capture_on_commit_callbacks
):
    _endpoint(acme, loopback)
    with django_capture_on_commit_callbacks(execute=True):
        first = webhook_test_send(tenant=acme)
        second = webhook_test_send(tenant=acme)

    assert first.event_id != second.event_id
    assert sorted(loopback.accepted) == sorted([first.event_id, second.event_id])
    assert len(loopback.arrivals) == 2


def test_a_receiver_on_a_private_address_is_refused_without_the_setting(
    db, acme, loopback, settings
):
    _endpoint(acme, loopback)
    # A name that passed the check when saved and now resolves to loopback (DNS rebinding).
    WebhookEndpoint.objects.filter(tenant=acme).update(
        url=loopback.url.replace("127.0.0.1", "localhost") + "/hook"
    )
    delivery = webhook_event_emit(tenant=acme, event_type="webhook.test", data={})
    settings.WEBHOOK_ALLOW_PRIVATE = False

    delay = webhook_deliver(delivery_id=delivery.pk)

    (attempt,) = delivery.attempts.all()
    assert attempt.status_code is None
    assert "refused" in attempt.error
    assert "not a public address" in attempt.error
    assert delay == BASE  # tried again later, in case the name changes back
    assert loopback.arrivals == []  # nothing reached the receiver


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # plain http without WEBHOOK_ALLOW_HTTP
        "https://user:pw@example.com/hook",
        "https://127.0.0.1/hook",
        "https://10.0.0.5/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fe80::1]/hook",
        "https://224.0.0.1/hook",
        "https://localhost/hook",
        "file:///etc/passwd",
        "https://example.com/hook#x",
        "https://exa mple.com/",
    ],
)
def test_urls_that_are_not_public_https_are_refused(db, acme, url):
    with pytest.raises(ValidationError):
        webhook_endpoint_set(tenant=acme, url=url, event_types=[])
    assert not WebhookEndpoint.objects.exists()


def test_unknown_event_types_are_refused(db, acme):
    with pytest.raises(ValidationError, match="Unknown event types: nope"):
        webhook_endpoint_set(tenant=acme, url="https://example.com/h", event_types=["nope"])


def test_a_redirect_is_not_followed(db, acme, loopback):
    _endpoint(acme, loopback, path="/redirect")
    delivery = webhook_event_emit(tenant=acme, event_type="webhook.test", data={})

    webhook_deliver(delivery_id=delivery.pk)

    (attempt,) = delivery.attempts.all()
    assert attempt.status_code == 302
    assert [a.path for a in loopback.arrivals] == ["/redirect"]  # /hook never asked
    delivery.refresh_from_db()
    assert delivery.state == WebhookDelivery.State.PENDING


def test_after_a_roll_both_secrets_sign_for_a_day(db, acme, loopback):
    issued = _endpoint(acme, loopback)
    new_secret = webhook_secret_roll(endpoint=issued.endpoint)
    delivery = webhook_event_emit(tenant=acme, event_type="webhook.test", data={})

    webhook_deliver(delivery_id=delivery.pk)  # the receiver still knows the old secret

    (arrival,) = loopback.arrivals
    assert arrival.signed
    assert new_secret != issued.secret
    endpoint = WebhookEndpoint.objects.get(tenant=acme)
    assert endpoint.previous_secret_expires_at - timezone.now() > timedelta(hours=23)
    # A day later only the new one signs.
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(previous_secret_expires_at=timezone.now())
    loopback.reset(secret=issued.secret)
    later = webhook_event_emit(tenant=acme, event_type="webhook.test", data={})
    webhook_deliver(delivery_id=later.pk)
    assert not loopback.arrivals[0].signed
    assert loopback.accepted == {}


def test_https_connects_to_the_checked_address_and_checks_the_certificate_for_the_name(
    db, acme, loopback, settings, tmp_path
):
    tls, ca_bundle = localhost_certificate(tmp_path)
    secure, server = start_receiver(tls)
    try:
        issued = webhook_endpoint_set(tenant=acme, url=secure.url + "/hook", event_types=[])
        secure.reset(secret=issued.secret)
        untrusted = webhook_event_emit(tenant=acme, event_type="webhook.test", data={})
        webhook_deliver(delivery_id=untrusted.pk)  # the public CAs do not know this one
        settings.WEBHOOK_CA_BUNDLE = ca_bundle
        trusted = webhook_event_emit(tenant=acme, event_type="webhook.test", data={})
        webhook_deliver(delivery_id=trusted.pk)
    finally:
        server.shutdown()

    (refused,) = untrusted.attempts.all()
    assert "CERTIFICATE_VERIFY_FAILED" in refused.error
    assert refused.status_code is None
    (accepted,) = trusted.attempts.all()
    assert accepted.status_code == 200
    assert list(secure.accepted) == [trusted.event_id]  # by name, at 127.0.0.1 (or ::1 first)


def test_the_signature_check_refuses_a_changed_body_or_an_old_timestamp():
    assert not signature_valid("t=1,v1=00", b"{}", "whsec_x")
    assert not signature_valid(f"t={int(time.time())},v1=00", b"{}", "whsec_x")


def test_an_endpoint_failing_for_three_days_is_disabled_and_its_owners_emailed(
    db, acme, alice, bob, loopback, django_capture_on_commit_callbacks
):
    _endpoint(acme, loopback, fail_first=100)
    WebhookEndpoint.objects.filter(tenant=acme).update(
        failing_since=timezone.now() - timedelta(days=3, minutes=1)
    )
    delivery = webhook_event_emit(tenant=acme, event_type="webhook.test", data={})

    with django_capture_on_commit_callbacks(execute=True):
        webhook_deliver(delivery_id=delivery.pk)

    endpoint = WebhookEndpoint.objects.get(tenant=acme)
    assert not endpoint.enabled
    assert endpoint.disabled_at is not None
    (message,) = mail.outbox
    assert message.to == ["alice@example.com"]  # owners only, not bob
    assert "disabled" in message.subject
    # Nothing more is made for it.
    assert webhook_event_emit(tenant=acme, event_type="webhook.test", data={}) is None


def test_keys_expiring_within_a_week_are_announced_once(db, acme, globex, loopback):
    _endpoint(acme, loopback)
    soon = services.apikey_issue(
        tenant=acme, name="soon", expires_at=timezone.now() + timedelta(days=6)
    )
    services.apikey_issue(tenant=acme, name="later", expires_at=timezone.now() + timedelta(days=30))
    services.apikey_issue(tenant=globex, name="no-endpoint",
                          expires_at=timezone.now() + timedelta(days=2))  # fmt: skip

    assert apikeys_expiring_notify() == 1
    assert apikeys_expiring_notify() == 0  # the next day's run: not again

    (delivery,) = WebhookDelivery.objects.filter(event_type="apikey.expiring")
    assert soon.api_key.display_prefix in delivery.body


def test_a_celery_worker_retries_with_backoff_until_the_receiver_accepts(
    transactional_db, acme, loopback, settings, tmp_path
):
    """The production shape: the event is queued on the broker by another process, and a real
    worker sends it, schedules each retry with its countdown, and stops once accepted."""
    _endpoint(acme, loopback, fail_first=2)
    env = gateway_env(CELERY_BROKER_URL=settings.REDIS_URL, WEBHOOK_ALLOW_PRIVATE="1",
                      WEBHOOK_ALLOW_HTTP="1", WEBHOOK_RETRY_BASE_SECONDS=str(BASE))  # fmt: skip
    flush(settings.REDIS_URL)
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            celery_worker_command("--pool", "solo", "--loglevel", "WARNING"),
            cwd=ROOT, env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        sent = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from billing.webhooks import webhook_test_send; from tenants.models import Tenant; "
             "print(webhook_test_send(tenant=Tenant.objects.get(slug='acme')).event_id)"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        event_id = sent.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + 40
        while event_id not in loopback.accepted and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2 * BASE)  # a further attempt, were one scheduled, would arrive now
    finally:
        worker.terminate()
        worker.wait(timeout=20)

    assert list(loopback.accepted) == [event_id]
    assert [a.status for a in loopback.arrivals] == [500, 500, 200]
    gaps = [b.at - a.at for a, b in zip(loopback.arrivals, loopback.arrivals[1:], strict=False)]
    assert gaps[0] >= BASE
    assert gaps[1] >= 2 * BASE
    delivery = WebhookDelivery.objects.get(event_id=event_id)
    assert delivery.state == WebhookDelivery.State.DELIVERED
    assert [a.status_code for a in delivery.attempts.all()] == [500, 500, 200]


def test_the_sweep_sends_a_delivery_whose_task_was_lost_once(db, acme, loopback):
    _endpoint(acme, loopback)
    delivery = webhook_event_emit(tenant=acme, event_type="webhook.test", data={})  # no commit:
    # its task was never sent, as when a worker dies before the broker has it.

    tasks.sweep_events()
    tasks.sweep_events()

    assert list(loopback.accepted) == [delivery.event_id]
    assert len(loopback.arrivals) == 1
