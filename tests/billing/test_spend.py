"""The running spend where admission reads it, on one Redis and on a Redis Cluster: a drained
batch adds to many tenants' keys at once (keys on many slots of a cluster)."""

from billing import spend


def test_a_batch_adds_to_every_tenants_spend_and_keeps_it_expiring(redis_url):
    months = ("2026-11", "2026-12")
    added = {(tenant, month): tenant * 10 for tenant in range(1, 41) for month in months}

    spend.spend_add_many(added)
    spend.spend_add_many({(7, "2026-12"): 5})

    assert {key: spend.spend_get(*key) for key in added} == {**added, (7, "2026-12"): 75}
    client = spend._redis()
    ttl = client.ttl(spend.spend_key(7, "2026-12"))
    assert 0 < ttl <= spend.SPEND_TTL_SECONDS


def test_set_and_add_one(redis_url):
    spend.spend_set(3, "2026-11", 1_000)
    spend.spend_add(3, "2026-11", 234)

    assert spend.spend_get(3, "2026-11") == 1_234
    assert spend.spend_get(4, "2026-11") == 0
