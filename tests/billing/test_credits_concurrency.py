"""Two ledger workers storing batches of one tenant at the same moment, on PostgreSQL: the
tenant's lock makes the second wait for the first's draw-downs, so together they never draw
more than the balance."""

import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection

from billing import credits
from billing.models import CreditEntry, UsageRecord
from billing.pricing import price_set
from tests.billing.factories import event, store

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_batches_never_draw_past_the_balance(acme):
    price_set(model_id="llama", input_per_million=Decimal(1000), output_per_million=Decimal(0),
              effective_from=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    credits.credits_grant(tenant=acme, amount=Decimal(25), reason="burst")
    batches = [[event(acme) for _ in range(10)] for _ in range(4)]  # 40.00 of usage
    start = threading.Barrier(len(batches))
    errors = []

    def worker(batch):
        try:
            start.wait()
            store(*batch)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert UsageRecord.objects.filter(tenant=acme).count() == 40
    balance = credits.credits_balance(acme)
    assert (balance.drawn, balance.balance) == (Decimal(25), Decimal(0))
    assert CreditEntry.objects.filter(kind=CreditEntry.Kind.DRAW).count() == 3  # 10, 10, 5
