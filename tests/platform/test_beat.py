"""Celery beat in production: two workers started with -B, as the README runs the ledger worker.
One beat sends the schedule (the lock in Redis), none writes a schedule file, a corrupt or
deleted schedule in Redis stops neither, and when the beat's worker stops the other takes over.
Ticks are counted from the drain tasks the workers receive (one a second when one beat runs)."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.billing.test_ledger_worker import BROKER
from tests.gateway_server import gateway_env
from tests.servers import ROOT, celery_worker_command

RECEIVED = "Task billing.tasks.drain_usage_events["
SENT = "Scheduler: Sending due task ledger-drain"


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log: Path

    def lines(self, marker: str) -> int:
        return sum(
            1
            for line in self.log.read_text(errors="replace").splitlines()
            if marker in line and (marker != RECEIVED or "received" in line)
        )

    def alive(self) -> bool:
        return self.process.poll() is None


def _start(name: str, folder: Path, env: dict) -> Worker:
    log = folder / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            celery_worker_command(
                "-B", "--concurrency", "1", "--loglevel", "INFO", "--hostname", f"{name}@%h"
            ),
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Worker(name, process, log)


def _stop(worker: Worker) -> None:
    if worker.alive():
        worker.process.terminate()
        try:
            worker.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait(timeout=10)


def _received(workers) -> int:
    return sum(w.lines(RECEIVED) for w in workers)


def _wait_for(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.2)


def _ticks_over(workers, seconds: float) -> int:
    before = _received(workers)
    time.sleep(seconds)
    return _received(workers) - before


@pytest.fixture
def two_workers(transactional_db, tmp_path, settings):
    """Two ledger workers with their beats, in a folder of their own (where the default
    scheduler would write its file), on the test Redis; both stopped at the end."""
    beat_redis = redis.Redis.from_url(BROKER, decode_responses=True)
    beat_redis.flushdb()  # no task, schedule or lock left by an earlier run
    env = gateway_env(CELERY_BROKER_URL=BROKER, PYTHONPATH=str(ROOT))
    workers = [_start(name, tmp_path, env) for name in ("first", "second")]
    try:
        _wait_for(lambda: _received(workers) >= 3, "the first drains")
        yield workers, beat_redis
    finally:
        for worker in workers:
            _stop(worker)


def _sender(workers) -> Worker:
    senders = [w for w in workers if w.lines("holds the lock")]
    assert len(senders) == 1, [w.log.read_text() for w in workers]
    return senders[0]


def test_two_workers_with_beat_send_the_schedule_once_and_write_no_file(two_workers, tmp_path):
    workers, _beat_redis = two_workers
    window = 8.0
    sent_before = {w.name: w.lines(SENT) for w in workers}

    ticks = _ticks_over(workers, window)

    sent = {w.name: w.lines(SENT) - sent_before[w.name] for w in workers}
    sender = _sender(workers)
    assert window * 0.5 <= ticks <= window * 1.5  # two beats would send twice as many
    assert sent[sender.name] >= window * 0.5
    assert sum(sent.values()) == sent[sender.name]  # the standby beat sent nothing
    assert all(w.alive() for w in workers)
    assert not list(tmp_path.glob("celerybeat-schedule*"))
    assert not list(ROOT.glob("celerybeat-schedule*"))


def _damage(beat_redis, damage: str) -> None:
    keys = list(beat_redis.scan_iter("redbeat:*"))
    assert {"redbeat::schedule", "redbeat::lock"} <= set(keys)
    if damage == "definitions not JSON":
        for key in keys:
            if beat_redis.type(key) == "hash":
                beat_redis.hset(key, mapping={"definition": "{oops", "meta": "]["})
    elif damage == "schedule of another type":
        beat_redis.delete("redbeat::schedule", "redbeat::statics")
        beat_redis.set("redbeat::schedule", "garbage")
        beat_redis.set("redbeat::statics", "garbage")
    elif damage == "lock without expiry":
        beat_redis.set("redbeat::lock", "garbage")  # no beat holds it, none could take it
    else:
        beat_redis.delete(*keys)


DAMAGES = (
    "definitions not JSON",
    "schedule of another type",
    "lock without expiry",
    "every key deleted",
)


def test_a_corrupt_or_deleted_schedule_stops_neither_worker_nor_the_ticks(two_workers):
    workers, beat_redis = two_workers
    ticks = {}

    for damage in DAMAGES:
        _damage(beat_redis, damage)
        time.sleep(2)  # the beat finds out on its next tick or two
        ticks[damage] = _ticks_over(workers, 6.0)
        assert all(w.alive() for w in workers), damage
        assert beat_redis.type("redbeat::schedule") == "zset", damage
        assert beat_redis.pttl("redbeat::lock") > 0, damage  # held again, with an expiry

    assert all(3 <= n <= 9 for n in ticks.values()), ticks  # one beat: two would send 12
    logs = "".join(w.log.read_text() for w in workers)
    assert "the schedule in Redis cannot be read" in logs
    assert "Traceback" not in logs


def test_when_the_beats_worker_stops_the_other_beat_takes_over(two_workers):
    workers, _beat_redis = two_workers
    sender = _sender(workers)
    other = next(w for w in workers if w is not sender)

    _stop(sender)
    _wait_for(lambda: other.lines("holds the lock"), "the standby beat taking the lock", 15)
    ticks = _ticks_over([other], 5.0)

    assert "beat: Releasing lock" in sender.log.read_text()
    assert ticks >= 3
    assert other.alive()


def _settings_of(**env) -> list[str]:
    names = ("CELERY_BEAT_SCHEDULER", "CELERY_REDBEAT_REDIS_URL")
    script = (
        "import django; django.setup(); from django.conf import settings; "
        f"print(*(getattr(settings, n) for n in {names!r}), sep='\\n')"
    )
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "CELERY_BROKER_URL", "REDBEAT_REDIS_URL")
    }
    clean.update(DJANGO_SETTINGS_MODULE="saas_platform.settings")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=dict(clean, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 or not result.stdout, result.stdout
    return result.stdout.splitlines() or [result.stderr.strip().splitlines()[-1]]


def test_the_beat_redis_is_one_redis_the_brokers_first():
    cluster = "redis+cluster://127.0.0.1:7000"
    locked = "saas_platform.beat:LockedRedisScheduler"

    on_broker = _settings_of(REDIS_URL=cluster, CELERY_BROKER_URL="redis://127.0.0.1:6379/1")
    on_redis = _settings_of(
        REDIS_URL="redis://127.0.0.1:6379/0", CELERY_BROKER_URL="amqp://guest@127.0.0.1//"
    )
    named = _settings_of(
        REDIS_URL=cluster,
        CELERY_BROKER_URL="amqp://guest@127.0.0.1//",
        REDBEAT_REDIS_URL="redis://127.0.0.1:6379/3",
    )
    no_redis = _settings_of(CELERY_BROKER_URL="amqp://guest@127.0.0.1//")
    refused = _settings_of(REDBEAT_REDIS_URL=cluster)

    assert on_broker == [locked, "redis://127.0.0.1:6379/1"]
    assert on_redis == [locked, "redis://127.0.0.1:6379/0"]
    assert named == [locked, "redis://127.0.0.1:6379/3"]
    assert no_redis == ["celery.beat:Scheduler", "None"]  # in memory, from settings, no file
    assert refused == [
        "django.core.exceptions.ImproperlyConfigured: REDBEAT_REDIS_URL must name one Redis "
        f"(redis:// or rediss://), got '{cluster}'"
    ]
