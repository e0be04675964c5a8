"""Spend alerts: a tenant driven past 50, 80 and 100% of its monthly budget gets exactly one
alert per threshold per month, by email to its owners and to its webhook, however often the
ledger stores or re-checks a batch: a retried batch, a worker killed before or after its
alerts, a restarted drain."""

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.core.exceptions import ValidationError

from billing import tasks
from billing.alerts import alert_thresholds_set, alerts_check
from billing.credits import credits_grant
from billing.ledger import LedgerRecorder
from billing.models import SpendAlert, WebhookDelivery
from billing.pricing import price_set
from billing.webhooks import webhook_endpoint_set
from tenants import services
from tests.billing.factories import event, store
from tests.fakes.webhook_receiver import start_receiver
from tests.gateway_server import gateway_env
from tests.redis_cluster import flush
from tests.servers import ROOT

# $1 per 1,000 prompt tokens; the budget is $10.
PRICE = Decimal(1000)
BUDGET = Decimal(10)


@pytest.fixture(scope="module")
def receiver():
    found, server = start_receiver()
    yield found
    server.shutdown()


@pytest.fixture
def budgeted(acme, alice, bob, settings, receiver):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_ALLOW_HTTP = True
    price_set(model_id="llama", input_per_million=PRICE, output_per_million=Decimal(0),
              effective_from=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    services.tenant_update(tenant=acme, monthly_budget=BUDGET)
    issued = webhook_endpoint_set(tenant=acme, url=receiver.url + "/hook", event_types=[])
    receiver.reset(secret=issued.secret)
    acme.refresh_from_db()
    return acme


def _spend(tenant, dollars: int, **options):
    return event(tenant, prompt=dollars * 1000, completion=0, **options)


def _thresholds(tenant) -> list[int]:
    return sorted(SpendAlert.objects.filter(tenant=tenant).values_list("threshold", flat=True))


def test_each_threshold_fires_once_by_email_and_webhook(
    db, budgeted, globex, receiver, django_capture_on_commit_callbacks
):
    first = [_spend(budgeted, 3), _spend(budgeted, 2)]  # $5: 50%
    with django_capture_on_commit_callbacks(execute=True):
        store(*first)
        store(*first)  # the same batch again (a retried drain): nothing more
        store(_spend(budgeted, 1))  # $6: still past 50 only
        store(_spend(budgeted, 6), _spend(globex, 50))  # $12: 80 and 100 at once

    assert _thresholds(budgeted) == [50, 80, 100]
    assert not SpendAlert.objects.filter(tenant=globex).exists()  # no budget, no alert
    subjects = sorted(m.subject for m in mail.outbox)
    assert subjects == [f"Acme Corp has used {t}% of its {datetime.now(UTC):%B %Y} budget"
                        for t in (100, 50, 80)]  # fmt: skip
    assert all(m.to == ["alice@example.com"] for m in mail.outbox)  # owners, not bob
    assert "$" not in mail.outbox[0].body
    assert "USD" in mail.outbox[0].body
    events = sorted(receiver.accepted.values(), key=lambda e: e["data"]["threshold"])
    assert [e["data"]["threshold"] for e in events] == [50, 80, 100]
    assert all(e["type"] == "budget.threshold_reached" for e in events)
    assert events[0]["data"]["budget"] == "10.00"
    assert events[0]["data"]["currency"] == "USD"
    assert events[0]["data"]["spend"] == "5.00"
    assert events[0]["data"]["period"] == f"{datetime.now(UTC):%Y-%m}"
    assert all(a.signed for a in receiver.arrivals)
    assert len(receiver.arrivals) == 3

    # A new month starts from nothing.
    next_month = datetime(2099, 1, 15, tzinfo=UTC)
    with django_capture_on_commit_callbacks(execute=True):
        store(_spend(budgeted, 5, at=next_month))
    assert SpendAlert.objects.filter(tenant=budgeted, period="2099-01-01").count() == 1


def _drain(env: dict, crash_at: str | None = None) -> subprocess.CompletedProcess:
    if crash_at:
        env = dict(env, LEDGER_CRASH_AT=crash_at)
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from billing.ledger import ledger_drain; print(ledger_drain())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("crash_at", ["before_alerts", "after_commit"])
def test_a_ledger_worker_killed_around_its_alerts_sends_each_once(
    transactional_db, budgeted, receiver, settings, crash_at, tmp_path
):
    flush(settings.REDIS_URL)
    recorder = LedgerRecorder()
    for _ in range(11):  # $11: past all three thresholds
        recorder.record(_spend(budgeted, 1))
    env = gateway_env(LEDGER_RECLAIM_IDLE_SECONDS="0", REDIS_URL=settings.REDIS_URL,
                      WEBHOOK_ALLOW_PRIVATE="1", WEBHOOK_ALLOW_HTTP="1",
                      EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
                      EMAIL_FILE_PATH=str(tmp_path))  # fmt: skip

    crashed = _drain(env, crash_at)
    alerts_after_crash = _thresholds(budgeted)
    recovered = _drain(env)  # the restarted worker: claims the dead one's batch

    assert crashed.returncode == 137
    assert alerts_after_crash == ([] if crash_at == "before_alerts" else [50, 80, 100])
    assert recovered.returncode == 0, recovered.stderr
    assert _thresholds(budgeted) == [50, 80, 100]
    assert WebhookDelivery.objects.filter(event_type="budget.threshold_reached").count() == 3
    # Whichever worker made them sent them (at commit, eagerly here): each once.
    assert sorted(e["data"]["threshold"] for e in receiver.accepted.values()) == [50, 80, 100]
    assert len(receiver.arrivals) == 3
    assert len(list(tmp_path.iterdir())) == 3  # one email file each


def test_a_tenant_past_its_budget_costs_a_batch_six_queries(
    db, budgeted, globex, django_assert_max_num_queries
):
    store(_spend(budgeted, 11))
    pairs = [
        (budgeted.pk, datetime.now(UTC).date().replace(day=1)),
        (globex.pk, datetime.now(UTC).date().replace(day=1)),
    ]

    # The tenants, the month's spend, the keys with budgets (none here), their own thresholds,
    # the alerts fired already, the prepaid tenants (none).
    with django_assert_max_num_queries(6):
        made = alerts_check(pairs)

    assert made == []
    assert _thresholds(budgeted) == [50, 80, 100]


def test_a_tenant_with_its_own_thresholds_is_alerted_at_those(
    db, budgeted, django_capture_on_commit_callbacks
):
    alert_thresholds_set(tenant=budgeted, thresholds=[90, 25, 25])

    with django_capture_on_commit_callbacks(execute=True):
        store(_spend(budgeted, 6))  # 60%: past 25 only

    assert _thresholds(budgeted) == [25]
    (message,) = mail.outbox
    assert "25%" in message.subject


@pytest.mark.parametrize(
    "thresholds", [[], [0], [1001], [50.5], ["80"], [True], list(range(1, 12))]
)
def test_thresholds_outside_the_rule_are_refused(db, acme, thresholds):
    with pytest.raises(ValidationError, match="whole percentages"):
        alert_thresholds_set(tenant=acme, thresholds=thresholds)
    assert not acme.alert_rules.exists()


def test_the_sweep_emails_an_alert_whose_email_was_lost_once(db, budgeted):
    store(_spend(budgeted, 5))  # its commit hooks never ran: the email task was lost
    (alert,) = SpendAlert.objects.filter(tenant=budgeted)
    SpendAlert.objects.filter(pk=alert.pk).update(
        created_at=alert.created_at - timedelta(minutes=2)
    )

    tasks.sweep_events()
    tasks.sweep_events()

    (message,) = mail.outbox
    assert "50%" in message.subject
    alert.refresh_from_db()
    assert alert.emailed_at is not None


def test_a_keys_own_budget_alerts_as_the_key(
    db, budgeted, receiver, django_capture_on_commit_callbacks
):
    capped = services.apikey_issue(tenant=budgeted, name="batch")
    services.apikey_update(api_key=capped.api_key, monthly_budget=Decimal(2))
    prefix = capped.api_key.display_prefix
    with django_capture_on_commit_callbacks(execute=True):
        store(_spend(budgeted, 1, api_key_prefix=prefix))  # the key at 50%, the tenant at 10%
        store(_spend(budgeted, 1, api_key_prefix=prefix))  # 100% of the key's

    keyed = SpendAlert.objects.filter(tenant=budgeted, scope=SpendAlert.Scope.KEY_BUDGET)
    assert sorted(keyed.values_list("threshold", flat=True)) == [50, 80, 100]
    assert set(keyed.values_list("scope_ref", flat=True)) == {prefix}
    assert not SpendAlert.objects.filter(scope=SpendAlert.Scope.TENANT_BUDGET).exists()
    assert f"has used 100% of key {prefix} " in sorted(m.subject for m in mail.outbox)[0]
    assert {e["data"]["key_prefix"] for e in receiver.accepted.values()} == {prefix}


def test_a_prepaid_balance_alerts_once_per_crossing_and_again_after_a_top_up(
    db, budgeted, receiver, django_capture_on_commit_callbacks
):
    services.tenant_update(tenant=budgeted, monthly_budget=None, prepaid=True)
    credits_grant(tenant=budgeted, amount=Decimal(12), reason="first")
    with django_capture_on_commit_callbacks(execute=True):
        store(_spend(budgeted, 3))  # 9 left: at or below 10
        store(_spend(budgeted, 1))  # 8: still only 10
        store(_spend(budgeted, 8))  # 0: at or below 1 too
    credits_grant(tenant=budgeted, amount=Decimal(20), reason="top-up")
    with django_capture_on_commit_callbacks(execute=True):
        store(_spend(budgeted, 11))  # 9 left of the top-up: 10 again

    low = SpendAlert.objects.filter(tenant=budgeted, scope=SpendAlert.Scope.CREDIT_BALANCE)
    assert sorted(low.values_list("threshold", flat=True)) == [1, 10, 10]
    events = [e for e in receiver.accepted.values() if e["type"] == "credits.balance_low"]
    assert sorted((e["data"]["threshold"], e["data"]["balance"]) for e in events) == [
        ("1", "0.00"), ("10", "9.00"), ("10", "9.00")]  # fmt: skip
    subjects = [m.subject for m in mail.outbox if "prepaid credits" in m.subject]
    assert len(subjects) == 3
    assert "Acme Corp's prepaid credits are down to 9.00 USD" in subjects
    assert not SpendAlert.objects.filter(scope=SpendAlert.Scope.TENANT_BUDGET).exists()
