"""The usage stream's contract, on one Redis and on a Redis Cluster: whichever way a gateway
appends an event (record, arecord, or queued on its own pipeline), a drain stores it once and
leaves the stream empty and acknowledged; what a dead consumer took is claimed and stored."""

import asyncio

from billing.ledger import GROUP, STREAM, LedgerRecorder, ledger_drain
from billing.models import UsageRecord
from saas_platform.redis_clients import async_client
from tests.billing.factories import event


def _stored_ids() -> set[str]:
    return set(UsageRecord.objects.values_list("request_id", flat=True))


def test_every_way_of_appending_is_drained_into_the_ledger_once(db, acme, redis_url):
    recorder = LedgerRecorder()
    direct, awaited = event(acme), event(acme)
    queued = [event(acme) for _ in range(3)]
    recorder.record(direct)

    async def gateway():
        await recorder.arecord(awaited)
        # The gateway's finish: the XADDs share its pipeline with commands on other slots.
        pipe = async_client().pipeline(transaction=False)
        appended = [recorder.queue_append(pipe, e) for e in queued]
        pipe.hincrby("live:{llama}:inflight", "n1", -1)
        results = await pipe.execute()
        return appended, results

    appended, results = asyncio.run(gateway())

    assert appended == [True, True, True]
    assert len(results) == 4  # one command a queued append, in order
    assert ledger_drain() == 5
    assert _stored_ids() == {e.request_id for e in [direct, awaited, *queued]}
    assert recorder.client.xlen(STREAM) == 0
    assert recorder.client.xpending(STREAM, GROUP)["pending"] == 0
    assert ledger_drain() == 0  # nothing twice


def test_what_a_dead_consumer_took_is_claimed_and_stored(db, acme, redis_url, settings):
    settings.LEDGER_RECLAIM_IDLE_SECONDS = 0
    recorder = LedgerRecorder()
    events = [event(acme) for _ in range(4)]
    for e in events:
        recorder.record(e)
    client = recorder.client
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    taken = client.xreadgroup(GROUP, "died-mid-batch", {STREAM: ">"}, count=3)

    stored = ledger_drain()

    assert sum(len(entries) for _stream, entries in taken) == 3
    assert stored == 4
    assert _stored_ids() == {e.request_id for e in events}
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_without_redis_nothing_is_queued_and_the_caller_records_it(db, acme, settings):
    settings.REDIS_URL = ""
    recorder = LedgerRecorder()
    usage = event(acme)

    queued = recorder.queue_append(object(), usage)  # no pipeline is touched
    recorder.record(usage)

    assert queued is False
    assert _stored_ids() == {usage.request_id}
