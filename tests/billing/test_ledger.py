"""The ledger: every event stored exactly once, priced at its own time, append-only."""

import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import DatabaseError, transaction

from billing import spend
from billing.models import DailyUsage, UsageRecord
from billing.pricing import price_set
from saas_platform import periods
from tests.billing.factories import event, store

NOV = datetime(2026, 11, 1, tzinfo=UTC)


def at(day: int, hour: int = 12) -> datetime:
    return NOV.replace(day=day, hour=hour)


def test_a_duplicate_delivery_is_stored_once(acme):
    delivered = event(acme)

    first = store(delivered)
    second = store(delivered, delivered)

    assert (first.stored, second.stored, second.duplicates) == (1, 0, 1)
    assert UsageRecord.objects.filter(request_id=delivered.request_id).count() == 1


def test_the_same_request_id_with_another_payload_is_refused_and_logged(acme, caplog):
    original = event(acme, prompt=10, request_id="req_same")
    store(original)

    with caplog.at_level(logging.ERROR, logger="billing.ledger"):
        result = store(event(acme, prompt=99999, request_id="req_same"))

    assert (result.stored, result.conflicts) == (0, 1)
    assert UsageRecord.objects.get(request_id="req_same").prompt_tokens == 10
    assert "req_same refused" in caplog.text


def test_each_event_is_priced_by_the_price_in_effect_at_its_own_time(acme, globex):
    price_set(model_id="llama", input_per_million=Decimal("1.00"),
              output_per_million=Decimal("2.00"), effective_from=at(1, 0))  # fmt: skip
    price_set(model_id="llama", input_per_million=Decimal("3.00"),
              output_per_million=Decimal("6.00"), effective_from=at(15, 0))  # fmt: skip
    half = Decimal("0.50")
    price_set(model_id="llama", input_per_million=half, output_per_million=half, tenant=acme,
              effective_from=at(18, 0))  # fmt: skip

    early, middle, late = event(acme, at=at(10)), event(acme, at=at(16)), event(acme, at=at(20))
    other = event(globex, at=at(20))
    store(early, middle, late, other)

    # 1000 input and 500 output tokens each
    amounts = {r.request_id: r.amount for r in UsageRecord.objects.all()}
    assert amounts[early.request_id] == Decimal("0.002")  # 1000*1 + 500*2, per million
    assert amounts[middle.request_id] == Decimal("0.006")
    assert amounts[late.request_id] == Decimal("0.00075")  # acme's own price
    assert amounts[other.request_id] == Decimal("0.006")  # globex pays the list price


def test_an_unpriced_model_costs_nothing_but_is_still_recorded(acme):
    store(event(acme, model="free-model", at=at(3)))

    record = UsageRecord.objects.get()
    assert record.amount == 0
    assert record.price is None
    assert record.prompt_tokens == 1000


def test_the_ledger_is_append_only(acme):
    store(event(acme))

    with pytest.raises(DatabaseError), transaction.atomic():
        UsageRecord.objects.update(prompt_tokens=1)
    with pytest.raises(DatabaseError), transaction.atomic():
        UsageRecord.objects.all().delete()
    assert UsageRecord.objects.get().prompt_tokens == 1000


def test_daily_rollups_are_recomputed_so_a_retry_never_doubles(acme):
    price_set(model_id="llama", input_per_million=Decimal(1), output_per_million=Decimal(1),
              effective_from=at(1, 0))  # fmt: skip
    a, b = event(acme, at=at(5, 1)), event(acme, at=at(5, 23))
    store(a)
    store(b, a)  # a retried batch

    rollup = DailyUsage.objects.get(tenant=acme, day=at(5).date())
    assert (rollup.requests, rollup.prompt_tokens, rollup.completion_tokens) == (2, 2000, 1000)
    assert rollup.amount == Decimal("0.003")


def test_a_batch_with_a_repeat_inside_and_one_already_stored_stores_each_event_once(acme):
    price_set(model_id="llama", input_per_million=Decimal(1000), output_per_million=Decimal(0),
              effective_from=at(1, 0))  # fmt: skip
    now = datetime.now(tz=UTC)
    month = periods.month_key(now)
    stored, fresh = event(acme, at=now), event(acme, at=now)
    store(stored)
    before = spend.spend_get(acme.pk, month)

    result = store(fresh, stored, fresh)

    assert (result.stored, result.duplicates, result.conflicts) == (1, 1, 0)
    assert UsageRecord.objects.filter(request_id=fresh.request_id).count() == 1
    rollup = DailyUsage.objects.get(tenant=acme, day=now.date())
    assert (rollup.requests, rollup.prompt_tokens, rollup.amount) == (2, 2000, Decimal(2))
    # The running spend is the gateway's to add, when it settles a request: storing adds none.
    assert spend.spend_get(acme.pk, month) == before
