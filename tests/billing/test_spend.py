"""The running money counters where admission reads them, on one Redis and on a Redis Cluster:
exact picos past what a double holds, and a reconcile from the ledger that only raises."""

from datetime import UTC, datetime
from decimal import Decimal

from billing import money, spend
from billing.pricing import price_set
from tenants import services
from tests.billing.factories import event, store


def test_raising_a_counter_never_lowers_it_and_keeps_it_exact(redis_url):
    key = spend.spend_key(3, "2026-11")
    big = 123_456_789 * 10**12 + 7  # 123 million units and 7 picos: past 2^53

    spend.counter_set(key, big)
    spend.counter_raise(key, big - 1)
    kept = spend.counter_get(key)
    spend.counter_raise(key, big + 1, ttl=spend.SPEND_TTL_SECONDS)

    assert kept == big
    assert spend.counter_get(key) == big + 1
    assert 0 < spend._redis().ttl(key) <= spend.SPEND_TTL_SECONDS
    assert spend.counter_get(spend.spend_key(4, "2026-11")) == 0


def test_reconcile_raises_tenant_and_key_spend_to_the_ledger_and_keeps_what_runs_ahead(
    redis_url, transactional_db
):
    price_set(model_id="llama", input_per_million=Decimal("0.15"), output_per_million=Decimal(0),
              effective_from=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    acme, globex = (services.tenant_register(slug=slug) for slug in ("acme", "globex"))
    key = services.apikey_issue(tenant=acme, name="capped")
    services.apikey_update(api_key=key.api_key, monthly_budget=Decimal(1))
    now = datetime.now(tz=UTC)
    month = spend.month_key(now)
    store(event(acme, at=now, api_key_prefix=key.api_key.display_prefix),  # 1000 x 0.15 / 1e6
          event(acme, at=now))  # fmt: skip
    ahead = 10**12  # globex's gateway settled more than the ledger has stored yet
    spend.counter_set(spend.spend_key(globex.pk, month), ahead)
    store(event(globex, at=now))

    spend.spend_reconcile(now)

    assert spend.spend_get(acme.pk, month) == 2 * money.to_picos(Decimal("0.00015"))
    assert spend.counter_get(spend.key_spend_key(acme.pk, key.api_key.pk, month)) == (
        money.to_picos(Decimal("0.00015"))
    )
    assert spend.spend_get(globex.pk, month) == ahead
