"""How far the ledger is behind the usage stream: the figures in /metrics, GET /readyz failing
past LEDGER_LAG_ALERT_SECONDS, and the operators emailed once as it passes and once as it is
back, on one Redis and on a cluster."""

import time

import pytest
from django.core import mail

from billing.ledger import LAST_DRAIN, LedgerRecorder, ledger_drain
from billing.ledger_lag import ALERT, ledger_lag, ledger_lag_check
from saas_platform.redis_clients import sync_client
from tests.billing.factories import event, stream_aged


@pytest.fixture
def operators(settings):
    settings.OPERATOR_EMAILS = ["ops@example.com"]
    settings.LEDGER_LAG_ALERT_SECONDS = 60


def test_the_figures_follow_the_stream(acme, redis_url):
    before = ledger_lag()
    stream_aged(acme, 90)
    recorder = LedgerRecorder()
    for _ in range(4):
        recorder.record(event(acme))

    waiting = ledger_lag()
    stored = ledger_drain()
    after = ledger_lag()

    assert before.waiting == 0
    assert before.oldest_seconds == 0
    assert before.last_drain_at is None
    assert waiting.waiting == 5
    assert 89 < waiting.oldest_seconds < 100
    assert stored == 5
    assert after.waiting == 0
    assert after.oldest_seconds == 0
    assert time.time() - after.last_drain_at < 5


def test_readyz_fails_naming_the_ledger_while_healthz_stays_ok(acme, client, redis_url, operators):
    stream_aged(acme, 75)

    ready = client.get("/readyz")
    alive = client.get("/healthz")

    assert ready.status_code == 503
    assert ready.json()["failing"] == ["ledger"]
    reason = ready.json()["errors"]["ledger"]
    assert reason.startswith("the oldest of 1 unstored usage events is 75 s old")
    assert "(LEDGER_LAG_ALERT_SECONDS is 60): is the ledger worker running?" in reason
    assert alive.status_code == 200


def test_readyz_is_ok_when_the_oldest_event_is_younger_than_the_threshold(
    acme, client, redis_url, operators
):
    stream_aged(acme, 30)

    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": ["database", "ledger", "redis"]}
    assert not mail.outbox


def test_readyz_names_redis_when_it_does_not_answer_and_skips_the_ledger(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failing"] == ["redis"]
    assert "ledger" not in response.json()["errors"]


def test_the_operators_are_emailed_once_as_it_passes_and_once_as_it_recovers(
    acme, client, redis_url, operators
):
    stream_aged(acme, 120)

    for _ in range(3):
        assert client.get("/readyz").status_code == 503
    client.get("/metrics")
    behind = list(mail.outbox)
    ledger_drain()
    for _ in range(3):
        assert client.get("/readyz").status_code == 200
    client.get("/metrics")

    assert [m.subject for m in behind] == ["Usage is not reaching the ledger"]
    assert behind[0].to == ["ops@example.com"]
    assert "is the ledger worker (celery worker -B) running?" in behind[0].body
    assert [m.subject for m in mail.outbox] == [
        "Usage is not reaching the ledger",
        "Usage reaches the ledger again",
    ]
    assert not sync_client().exists(ALERT)


def test_an_alert_the_mail_server_refused_is_sent_on_a_later_check(
    acme, redis_url, operators, settings
):
    stream_aged(acme, 120)
    locmem = settings.MAILERS
    settings.MAILERS = {
        "default": {  # nothing listens on port 1
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": 1, "timeout": 2},
        }
    }

    ledger_lag_check()
    refused_left_alert = sync_client().exists(ALERT)
    settings.MAILERS = locmem
    ledger_lag_check()
    ledger_lag_check()

    assert not refused_left_alert  # so that the next check tries again
    assert [m.subject for m in mail.outbox] == ["Usage is not reaching the ledger"]


def test_metrics_export_the_lag_and_the_events_stored(acme, client, redis_url, operators):
    stream_aged(acme, 10)
    LedgerRecorder().record(event(acme))
    waiting = client.get("/metrics").content.decode()
    ledger_drain()
    drained = client.get("/metrics").content.decode()

    def value(text: str, name: str) -> float:
        (line,) = [line for line in text.splitlines() if line.startswith(f"{name} ")]
        return float(line.split()[1])

    assert value(waiting, "billing_ledger_stream_length") == 2
    assert 9 < value(waiting, "billing_ledger_oldest_unstored_seconds") < 20
    assert value(waiting, "billing_ledger_events_stored_total") == 0
    assert value(waiting, "billing_ledger_lag_alert_seconds") == 60
    assert "\nbilling_ledger_last_drain_timestamp_seconds " not in waiting  # no drain yet
    assert value(drained, "billing_ledger_stream_length") == 0
    assert value(drained, "billing_ledger_oldest_unstored_seconds") == 0
    assert value(drained, "billing_ledger_events_stored_total") == 2
    last_drain = value(drained, "billing_ledger_last_drain_timestamp_seconds")
    assert last_drain == float(sync_client().get(LAST_DRAIN))
    assert not mail.outbox
