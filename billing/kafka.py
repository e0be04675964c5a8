"""The Kafka usage stream: each usage event, once the ledger has stored it, produced to a topic
for the operator's data platform (the seed's Kafka adapter).

The recorder is fed by the ledger's drain (billing.ledger), never by a gateway: a batch is
stored first, then produced, and its entries in the ledger's Redis stream are acknowledged only
once Kafka has confirmed them. A broker that is down therefore holds entries in the stream (the
ledger itself goes on storing, and a retry stores nothing twice), and they are produced, in
their order, when it answers again. The producer is idempotent (`enable.idempotence`,
`acks=all`), so librdkafka's own retries never write a message twice, and messages are keyed
by tenant id, so one tenant's events land on one partition, in order.

confluent-kafka is an optional dependency (`pip install '.[kafka]'`): this module is imported
only when USAGE_RECORDERS names the recorder.
"""

import logging
import threading

import orjson
from confluent_kafka import KafkaException, Producer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from billing.usage import UsageEvent
from saas_platform import metrics

logger = logging.getLogger(__name__)


class KafkaDeliveryError(Exception):
    """Some events of a batch were not confirmed by the broker; they are retried."""


def producer_config() -> dict:
    """librdkafka's settings: the platform's, then the operator's SASL/TLS ones passed through."""
    if not settings.KAFKA_BOOTSTRAP_SERVERS:
        raise ImproperlyConfigured("KafkaRecorder needs KAFKA_BOOTSTRAP_SERVERS")
    timeout_ms = int(settings.KAFKA_DELIVERY_TIMEOUT_SECONDS * 1000)
    config = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "enable.idempotence": True,
        "acks": "all",
        # A message not confirmed by then is reported failed, and its batch is retried.
        "message.timeout.ms": timeout_ms,
        "socket.timeout.ms": min(timeout_ms, 60_000),
        "client.id": "saas-platform-ledger",
    }
    optional = {
        "security.protocol": settings.KAFKA_SECURITY_PROTOCOL,
        "sasl.mechanism": settings.KAFKA_SASL_MECHANISM,
        "sasl.username": settings.KAFKA_SASL_USERNAME,
        "sasl.password": settings.KAFKA_SASL_PASSWORD,
        "ssl.ca.location": settings.KAFKA_SSL_CA_LOCATION,
    }
    config.update({name: value for name, value in optional.items() if value})
    return config


def encode(event: UsageEvent) -> bytes:
    """The message value: the usage event's documented fields as one JSON object."""
    return orjson.dumps(event.to_dict())


class KafkaRecorder:
    """A UsageRecorder fed after the ledger (`fed_after_ledger`): `record_many` produces a batch
    and waits for every delivery report, returning the request ids the broker confirmed."""

    fed_after_ledger = True

    def __init__(self):
        self.topic = settings.KAFKA_USAGE_TOPIC
        self._config = producer_config()
        self._producer = None
        self._lock = threading.Lock()

    def _get_producer(self):
        # Made on first use, in the process that uses it (a Celery worker forks after start-up,
        # and librdkafka's threads do not survive a fork).
        if self._producer is None:
            self._producer = Producer(self._config)
        return self._producer

    def record(self, event: UsageEvent) -> None:
        if not self.record_many([event]):
            raise KafkaDeliveryError(f"usage event {event.request_id} not confirmed")

    def record_many(self, events: list[UsageEvent]) -> set[str]:
        """Produce the events in order and wait for their delivery reports (at most
        KAFKA_DELIVERY_TIMEOUT_SECONDS and a little); return the request ids confirmed. The
        failed ones are counted and logged; the caller retries them."""
        if not events:
            return set()
        confirmed: set[str] = set()
        failed: list[str] = []
        fatal = False

        def report(error, request_id: str) -> None:
            nonlocal fatal
            if error is None:
                confirmed.add(request_id)
            else:
                failed.append(f"{request_id}: {error.str()}")
                fatal = fatal or error.fatal()

        with self._lock:  # one batch at a time: the reports above belong to it
            producer = self._get_producer()
            remaining = 0
            try:
                for event in events:
                    self._produce(producer, event, report)
                remaining = producer.flush(settings.KAFKA_DELIVERY_TIMEOUT_SECONDS + 5)
            except KafkaException as error:  # raised by produce, or by flush for a fatal error
                fatal = fatal or error.args[0].fatal()
                failed.append(error.args[0].str())
            if fatal:
                # An idempotent producer whose sequence the broker no longer knows (a broker
                # that lost its state, e.g. restarted empty) stops for good; a new one starts
                # a new sequence. What the old one had not delivered is produced again.
                self._producer = None
        missing = len(events) - len(confirmed)
        if missing:
            metrics.USAGE_FORWARD_FAILURES.labels(recorder="KafkaRecorder").inc(missing)
            logger.warning(
                "Kafka confirmed %d of %d usage events (%d still queued); first failure: %s",
                len(confirmed), len(events), remaining, failed[0] if failed else "timed out",
            )  # fmt: skip
        return confirmed

    def _produce(self, producer, event: UsageEvent, report) -> None:
        while True:
            try:
                producer.produce(
                    self.topic,
                    key=event.tenant_id.encode(),
                    value=encode(event),
                    on_delivery=lambda error, _message, rid=event.request_id: report(error, rid),
                )
                return
            except BufferError:  # the local queue is full: let librdkafka send some first
                producer.poll(0.5)
