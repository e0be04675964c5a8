"""Prepaid credits on PostgreSQL: grants, draw-downs when the ledger stores usage (oldest-expiring
grant first, never more than is left, once per event however often a batch is retried), lapses,
the counters admission reads (on Redis and in the embedded default's process memory), and the
invoice's credits applied and amount due."""

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction

from billing import credits, exports, spend, tasks
from billing.invoices import invoice_close, invoice_data, invoice_for, month_start
from billing.models import CreditEntry, UsageRecord
from billing.pricing import price_set
from tenants.quotas import TenantConfig, validate_tenant_config
from tests.billing.factories import event, store

pytestmark = pytest.mark.django_db

PICOS = 10**12
Kind = CreditEntry.Kind


@pytest.fixture
def priced(acme):
    # 1000 prompt tokens at 1000 per million: each default test event costs exactly 1.00.
    price_set(
        model_id="llama",
        input_per_million=Decimal(1000),
        output_per_million=Decimal(0),
        effective_from=datetime(2020, 1, 1, tzinfo=UTC),
    )
    return acme


@pytest.fixture(params=["redis", "embedded"])
def counters(request, settings, acme):
    """The credit counters of acme, starting empty, on Redis or in process memory."""
    if request.param == "embedded":
        settings.REDIS_URL = ""
    keys = (spend.credit_granted_key(acme.pk), spend.credit_used_key(acme.pk))
    if settings.REDIS_URL:
        spend._redis().delete(*keys)
    else:
        store_, lock = spend.local_counters()
        with lock:
            for key in keys:
                store_.pop(key, None)
    return request.param


def granted(tenant) -> int:
    return spend.counter_get(spend.credit_granted_key(tenant.pk))


def used(tenant) -> int:
    return spend.counter_get(spend.credit_used_key(tenant.pk))


def in_days(days: int) -> date:
    return datetime.now(tz=UTC).date() + timedelta(days=days)


def test_a_grant_sets_the_granted_counter_and_the_balance(priced, counters):
    credits.credits_grant(tenant=priced, amount=Decimal("5.00"), reason="welcome", actor="ops")
    credits.credits_grant(
        tenant=priced, amount=Decimal("2.50"), reason="promo", expires=in_days(30)
    )

    balance = credits.credits_balance(priced)
    assert (balance.granted, balance.drawn, balance.lapsed, balance.balance) == (
        Decimal("7.50"),
        0,
        0,
        Decimal("7.50"),
    )
    assert granted(priced) == 7_500_000_000_000
    assert used(priced) == 0
    promo = CreditEntry.objects.get(reason="promo")
    assert promo.expires_at == datetime.combine(in_days(31), datetime.min.time(), tzinfo=UTC)


def test_usage_draws_oldest_expiring_first_never_past_the_balance_and_once(priced, counters):
    never = credits.credits_grant(tenant=priced, amount=Decimal(5), reason="never expires")
    later = credits.credits_grant(
        tenant=priced, amount=Decimal(2), reason="later", expires=in_days(10)
    )
    sooner = credits.credits_grant(
        tenant=priced, amount=Decimal(1), reason="sooner", expires=in_days(5)
    )
    batch = [event(priced) for _ in range(3)]

    store(*batch)
    store(*batch)  # the batch retried: stores nothing new, draws nothing

    draws = CreditEntry.objects.filter(kind=Kind.DRAW).order_by("id")
    assert [(d.grant_id, d.amount) for d in draws] == [(sooner.pk, 1), (later.pk, 2)]
    assert credits.credits_balance(priced).balance == Decimal(5)
    assert used(priced) == 3 * PICOS

    store(*[event(priced) for _ in range(7)])  # 7.00 of usage, 5.00 left

    assert [(d.grant_id, d.amount) for d in draws.filter(grant=never)] == [(never.pk, 5)]
    balance = credits.credits_balance(priced)
    assert (balance.drawn, balance.balance) == (Decimal(8), Decimal(0))
    assert used(priced) == 8 * PICOS
    assert granted(priced) == 8 * PICOS
    draft = invoice_for(priced, month_start())
    assert (draft.total, draft.credits_applied, draft.amount_due) == (
        Decimal("10.00"),
        Decimal("8.00"),
        Decimal("2.00"),
    )


def test_tenants_without_credits_draw_nothing(priced, globex):
    credits.credits_grant(tenant=globex, amount=Decimal(1), reason="only globex")

    store(event(priced), event(priced))

    assert not CreditEntry.objects.filter(kind=Kind.DRAW).exists()
    assert invoice_for(priced, month_start()).amount_due == Decimal("2.00")


def test_expired_credits_lapse_once_and_lower_the_granted_counter(priced, counters):
    grant = credits.credits_grant(
        tenant=priced, amount=Decimal(3), reason="trial", expires=in_days(0)
    )
    credits.credits_grant(tenant=priced, amount=Decimal(1), reason="kept")
    store(event(priced))  # 1.00 drawn from the trial grant, which expires first

    assert credits.credits_lapse_expired(now=grant.expires_at - timedelta(seconds=1)) == 0
    assert credits.credits_lapse_expired(now=grant.expires_at) == 1
    assert credits.credits_lapse_expired(now=grant.expires_at + timedelta(days=1)) == 0
    assert tasks.lapse_expired_credits.apply().get() == 0  # beat's task: not expired yet now
    assert tasks.reconcile_credits.apply().get() == 1

    lapse = CreditEntry.objects.get(kind=Kind.LAPSE)
    assert (lapse.grant_id, lapse.amount) == (grant.pk, 2)
    balance = credits.credits_balance(priced)
    assert (balance.granted, balance.drawn, balance.lapsed, balance.balance) == (4, 1, 2, 1)
    assert granted(priced) == 2 * PICOS  # 4 granted less 2 lapsed
    assert used(priced) == 1 * PICOS
    store(event(priced, at=grant.expires_at + timedelta(hours=1)))
    assert credits.credits_balance(priced).balance == 0  # drawn from the grant that is left
    assert CreditEntry.objects.filter(kind=Kind.DRAW, grant=grant).count() == 1


def test_reconcile_sets_granted_and_only_raises_used(priced, counters):
    credits.credits_grant(tenant=priced, amount=Decimal(4), reason="top-up")
    store(event(priced))
    spend.counter_set(spend.credit_granted_key(priced.pk), 0)  # a Redis that lost its data
    spend.counter_set(spend.credit_used_key(priced.pk), 0)

    assert credits.credits_reconcile() == 1
    assert (granted(priced), used(priced)) == (4 * PICOS, 1 * PICOS)

    # The gateway settles requests before the ledger stores them: used runs ahead, and
    # reconciling must not take that back.
    spend.counter_set(spend.credit_used_key(priced.pk), 3 * PICOS)
    credits.credits_reconcile()
    assert (granted(priced), used(priced)) == (4 * PICOS, 3 * PICOS)


def test_reconcile_of_one_tenant_touches_only_its_counters(priced, globex, counters):
    credits.credits_grant(tenant=priced, amount=Decimal(4), reason="acme's")
    credits.credits_grant(tenant=globex, amount=Decimal(6), reason="globex's")
    spend.counter_set(spend.credit_granted_key(priced.pk), 0)
    spend.counter_set(spend.credit_granted_key(globex.pk), 0)

    assert credits.credits_reconcile(tenant_ids=[priced.pk]) == 1
    assert credits.credits_reconcile(tenant_ids=[]) == 0

    assert granted(priced) == 4 * PICOS
    assert granted(globex) == 0


def test_prepaid_is_validated_with_the_other_tenant_settings():
    with pytest.raises(ValidationError) as refused:
        validate_tenant_config(TenantConfig(prepaid="yes"))

    assert refused.value.message_dict == {"prepaid": ["Prepaid must be true or false."]}
    validate_tenant_config(TenantConfig(prepaid=True))


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"amount": Decimal("-1")}, "amount", "Amount must be more than 0."),
        ({"amount": Decimal(0)}, "amount", "Amount must be more than 0."),
        ({"amount": Decimal("1.005")}, "amount", "at most 2 decimal places"),
        ({"amount": 1.5}, "amount", "must be a decimal amount"),
        ({"reason": "  "}, "reason", "A grant needs a reason."),
        ({"expires": date(2020, 1, 1)}, "expires", "The expiry is in the past."),
    ],
)
def test_a_bad_grant_is_refused_and_writes_nothing(priced, kwargs, field, message):
    grant = {"amount": Decimal(1), "reason": "ok", **kwargs}

    with pytest.raises(ValidationError) as refused:
        credits.credits_grant(tenant=priced, **grant)

    assert message in " ".join(refused.value.message_dict[field])
    assert not CreditEntry.objects.exists()


def test_the_credit_ledger_refuses_updates_and_deletes(priced):
    grant = credits.credits_grant(tenant=priced, amount=Decimal(1), reason="fixed")

    for change in (
        lambda: CreditEntry.objects.filter(pk=grant.pk).update(amount=100),
        lambda: CreditEntry.objects.filter(pk=grant.pk).delete(),
    ):
        with pytest.raises(DatabaseError), transaction.atomic():
            change()

    assert CreditEntry.objects.get(pk=grant.pk).amount == 1


def test_a_closed_invoice_and_its_exports_show_credits_applied_and_amount_due(priced):
    last_month = (month_start() - timedelta(days=1)).replace(day=1)
    at = datetime(last_month.year, last_month.month, 3, tzinfo=UTC)
    credits.credits_grant(tenant=priced, amount=Decimal("2.50"), reason="prepaid")
    store(*[event(priced, at=at) for _ in range(4)])  # 4.00 of usage last month, 2.50 drawn
    store(event(priced))  # this month's: on next month's invoice, not this one

    data = invoice_data(invoice_close(tenant=priced, period=last_month))
    late = store(event(priced, at=at))  # stored after the close: next invoice's adjustment

    assert late.stored == 1
    assert (data.total, data.credits_applied, data.amount_due) == (
        Decimal("4.00"),
        Decimal("2.50"),
        Decimal("1.50"),
    )
    again = invoice_data(priced.invoices.get())
    assert (again.credits_applied, again.amount_due) == (Decimal("2.50"), Decimal("1.50"))
    rows = list(csv.DictReader(io.StringIO(exports.invoice_csv(data).decode())))
    assert {(r["credits_applied"], r["amount_due"]) for r in rows} == {("2.50", "1.50")}
    document = json.loads(exports.invoice_json(data))["invoice"]
    assert (document["credits_applied"], document["amount_due"]) == ("2.50", "1.50")
    assert exports.invoice_pdf(data).startswith(b"%PDF")
    current = invoice_for(priced, month_start())  # this month's usage and the late event
    assert (current.total, current.credits_applied) == (Decimal("2.00"), Decimal("0.00"))
    assert UsageRecord.objects.filter(tenant=priced).count() == 6
