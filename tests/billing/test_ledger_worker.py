"""The ledger path end to end: gateway -> Redis stream -> a real Celery worker -> PostgreSQL,
through a worker killed mid-batch, a PostgreSQL restart and a worker stopped under load (seen
in /readyz, /metrics and the operators' email), losing and doubling nothing."""

import subprocess
import sys
import threading
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import redis
from django.db import connections
from django.utils import timezone

from billing.ledger import LedgerRecorder
from billing.models import UsageRecord
from billing.pricing import price_set
from tests.billing.factories import event
from tests.gateway_server import gateway_env, make_customer
from tests.metrics import scrape, value
from tests.redis_cluster import flush
from tests.servers import ROOT, celery_worker_command, free_port, gateway_command, running

HI = [{"role": "user", "content": "hi"}]
BROKER = "redis://127.0.0.1:6379/12"


def wait_for_rows(count: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while True:
        stored = UsageRecord.objects.count()
        if stored >= count or time.monotonic() > deadline:
            time.sleep(0.5)  # a duplicate, if there were one, would show now
            return UsageRecord.objects.count()
        time.sleep(0.2)


@pytest.fixture
def celery_worker(tmp_path):
    """A real Celery worker with its beat, which drains the stream every second."""
    redis.Redis.from_url(BROKER).flushdb()  # no task left by an earlier run
    env = gateway_env(CELERY_BROKER_URL=BROKER, LEDGER_RECLAIM_IDLE_SECONDS="1")
    command = celery_worker_command("-B", "--concurrency", "1", "--loglevel", "WARNING")
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    yield worker
    worker.terminate()
    worker.wait(timeout=20)
    log.close()


def test_gateway_usage_reaches_the_ledger_priced_through_a_celery_worker(
    gateway, catalog, celery_worker
):
    # From a minute ago: events carry whole seconds, as the seed's UsageEvent does.
    since = timezone.now() - timedelta(minutes=1)
    price_set(model_id="fake", input_per_million=Decimal(10), output_per_million=Decimal(20),
              effective_from=since)  # fmt: skip
    customer = make_customer(gateway)
    headers = {"Authorization": f"Bearer {customer.key}"}

    responses = [
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers=headers,
            json={"model": "fake", "messages": HI},
            timeout=30,
        )
        for _ in range(10)
    ]

    assert [r.status_code for r in responses] == [200] * 10
    assert wait_for_rows(10) == 10
    records = UsageRecord.objects.filter(tenant=customer.tenant)
    assert {r.request_id for r in records} == {r.headers["x-request-id"] for r in responses}
    # the fake engine reports 10 prompt and 5 completion tokens
    assert all(r.amount == Decimal("0.0002") for r in records)


def _drain(crash_at: str | None, env: dict) -> subprocess.CompletedProcess:
    if crash_at:
        env = dict(env, LEDGER_CRASH_AT=crash_at)
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from billing.ledger import ledger_drain; print(ledger_drain())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("crash_at", ["before_commit", "after_commit"])
def test_a_worker_killed_mid_batch_loses_nothing_and_doubles_nothing(
    transactional_db, acme, crash_at, redis_url
):
    recorder = LedgerRecorder()
    events = [event(acme) for _ in range(25)]
    for usage in events:
        recorder.record(usage)
    env = gateway_env(LEDGER_RECLAIM_IDLE_SECONDS="0", REDIS_URL=redis_url)

    crashed = _drain(crash_at, env)
    stored_by_crashed = UsageRecord.objects.count()
    recovered = _drain(None, env)

    assert crashed.returncode == 137  # died as under SIGKILL, no clean-up
    assert stored_by_crashed == (25 if crash_at == "after_commit" else 0)
    assert recovered.returncode == 0, recovered.stderr
    assert UsageRecord.objects.count() == 25
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {
        e.request_id for e in events
    }
    assert recorder.client.xpending("usage:events", "ledger")["pending"] == 0


def _postgres(action: str) -> None:
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True,
                              check=True).stdout.split()  # fmt: skip
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", clusters[0], clusters[1],
                    action], check=True, capture_output=True, timeout=60)  # fmt: skip


def test_postgresql_restarting_during_a_burst_loses_nothing(gateway, catalog, tmp_path):
    connections.close_all()
    customer = make_customer(gateway)
    headers = {"Authorization": f"Bearer {customer.key}"}
    port = free_port()
    env = gateway_env(APIKEY_CACHE_SECONDS="300", CATALOG_CACHE_SECONDS="300")
    server = running(gateway_command(port, workers=1), env=env, log=tmp_path / "gw.log",
                     ready_url=f"http://127.0.0.1:{port}/healthz")  # fmt: skip
    worker_env = dict(env, CELERY_BROKER_URL=BROKER, LEDGER_RECLAIM_IDLE_SECONDS="1")
    worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        celery_worker_command("-B", "--concurrency", "1", "--loglevel", "WARNING"),
        cwd=ROOT, env=worker_env, stdout=worker_log, stderr=worker_log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "fake", "messages": HI}
    ids = []
    try:
        with server:
            warm = httpx.post(url, headers=headers, json=body, timeout=30)  # caches key, catalog
            ids.append(warm.headers["x-request-id"])
            connections.close_all()
            _postgres("stop")
            try:
                during = [
                    httpx.post(url, headers=headers, json=body, timeout=30) for _ in range(15)
                ]
            finally:
                _postgres("start")
            ids += [r.headers["x-request-id"] for r in during]
            deadline = time.monotonic() + 30
            while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode != 0:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            connections.close_all()
            stored = wait_for_rows(16, timeout=40)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        worker_log.close()

    assert warm.status_code == 200
    assert [r.status_code for r in during] == [200] * 15  # served while PostgreSQL was down
    assert stored == 16
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == set(ids)


class _Load:
    """Chat requests one after another on a thread until stopped (or 3,000 requests, or 180 s),
    keeping the request ids of those answered 200."""

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key
        self.ids: list[str] = []
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 180
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set() and len(self.statuses) < 3000:
                if time.monotonic() > deadline:
                    break
                response = client.post(
                    self.url, headers=headers, json={"model": "fake", "messages": HI}
                )
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.ids.append(response.headers["x-request-id"])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def _poll(url: str, status: int, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(url, timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.3)


def _emails(folder) -> list[str]:
    """The subjects of the emails the file backend wrote (one or more messages a file)."""
    texts = [path.read_text() for path in sorted(folder.glob("*"))] if folder.exists() else []
    return [
        line.removeprefix("Subject: ")
        for text in texts
        for line in text.splitlines()
        if line.startswith("Subject: ")
    ]


def test_a_stopped_ledger_worker_shows_in_readyz_and_metrics_and_recovers_losing_nothing(
    gateway, catalog, tmp_path, settings
):
    flush(settings.REDIS_URL)  # no usage event left in the stream by another test
    redis.Redis.from_url(BROKER).flushdb()
    customer = make_customer(gateway)
    emails = tmp_path / "emails"
    env = gateway_env(
        LEDGER_LAG_ALERT_SECONDS="3",
        OPERATOR_EMAILS="ops@example.com",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(emails),
        APIKEY_CACHE_SECONDS="300",
        CELERY_BROKER_URL=BROKER,
        LEDGER_RECLAIM_IDLE_SECONDS="1",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = celery_worker_command("-B", "--concurrency", "1", "--loglevel", "WARNING")

    def start_worker(name: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "wb") as log:
            return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)

    worker = start_worker("worker-1")
    try:
        gateway_log = tmp_path / "gw.log"
        with running(gateway_command(port), env=env, log=gateway_log, ready_url=f"{base}/healthz"):
            with _Load(f"{base}/v1/chat/completions", customer.key) as load:
                draining = _poll(f"{base}/readyz", 200, timeout=30)
                worker.terminate()
                worker.wait(timeout=30)
                behind = _poll(f"{base}/readyz", 503, timeout=30)
                lagging = [scrape(base)]
                time.sleep(1.5)
                lagging.append(scrape(base))
                alive_while_behind = httpx.get(f"{base}/healthz").status_code
                emailed_while_behind = _emails(emails)
                worker = start_worker("worker-2")
                recovered = _poll(f"{base}/readyz", 200, timeout=60)
            stored = wait_for_rows(len(load.ids), timeout=60)
            caught_up = scrape(base)
            emailed = _emails(emails)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    assert draining.status_code == 200
    assert behind.status_code == 503
    assert behind.json()["failing"] == ["ledger"]
    assert "is the ledger worker running?" in behind.json()["errors"]["ledger"]
    assert alive_while_behind == 200  # liveness is not readiness
    waiting = [value(text, "billing_ledger_stream_length") for text in lagging]
    assert waiting[0] < waiting[1]  # the requests go on; their usage waits in the stream
    assert value(lagging[1], "billing_ledger_oldest_unstored_seconds") > 3
    assert recovered.status_code == 200
    assert emailed_while_behind == ["Usage is not reaching the ledger"]
    assert emailed == ["Usage is not reaching the ledger", "Usage reaches the ledger again"]
    assert set(load.statuses) == {200}
    assert len(load.ids) > 50
    assert stored == len(load.ids)  # nothing lost, nothing doubled
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == set(load.ids)
    assert value(caught_up, "billing_ledger_stream_length") == 0
    assert value(caught_up, "billing_ledger_events_stored_total") >= len(load.ids)
    assert time.time() - value(caught_up, "billing_ledger_last_drain_timestamp_seconds") < 30
