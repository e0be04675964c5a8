"""The platform on a Redis Cluster (REDIS_URL=redis+cluster://...) as on one Redis: Django's
cache, the settings, /healthz, refusal counts, node locks, the shared ResourceManager, and what
an unreachable cluster raises (a RedisError, as one Redis does)."""

import asyncio
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from models_mgmt.placements import node_lock
from models_mgmt.shared_resource_manager import SharedResourceManager
from saas_platform.redis_cache import ClusterRedisCache
from saas_platform.redis_clients import async_client, sync_client
from tenants import refusals
from tests.conftest import ROOT

UNREACHABLE = "redis+cluster://127.0.0.1:1"  # nothing listens on port 1


@pytest.fixture
def cluster_cache(redis_cluster):
    cache = ClusterRedisCache(redis_cluster, {"KEY_PREFIX": "t", "TIMEOUT": 60})
    cache.clear()
    return cache


def test_the_django_cache_on_a_cluster(cluster_cache, redis_cluster):
    cache = cluster_cache
    other = sync_client(redis_cluster)
    other.set("adm:{42}:tok", "not the cache's")

    assert cache.add("a", {"x": 1})
    assert not cache.add("a", "again")
    cache.set_many({f"k{i}": i for i in range(30)})  # keys on many slots
    cache.set("gone", 1, timeout=0)
    cache.set("n", 5)

    assert cache.get("a") == {"x": 1}
    assert cache.get_many([f"k{i}" for i in range(30)] + ["missing"]) == {
        f"k{i}": i for i in range(30)
    }
    assert cache.get("gone") is None
    assert cache.incr("n", 2) == 7
    assert cache.has_key("k3")
    assert cache.touch("k3", 120)
    assert 60 < other.ttl(":".join(["t", "1", "k3"])) <= 120
    cache.delete_many([f"k{i}" for i in range(10)])
    assert cache.get_many([f"k{i}" for i in range(12)]) == {"k10": 10, "k11": 11}
    assert cache.delete("a")

    assert cache.clear()
    assert cache.get("k20") is None
    assert other.get("adm:{42}:tok") == b"not the cache's"  # only the cache's keys went


def test_a_cluster_that_cannot_be_reached_is_a_cache_miss():
    cache = ClusterRedisCache(UNREACHABLE, {"KEY_PREFIX": "t"})

    assert cache.get("a", "default") == "default"
    assert not cache.add("a", 1)
    cache.set("a", 1)
    assert cache.get_many(["a", "b"]) == {}
    cache.delete_many(["a"])


def test_an_unreachable_cluster_raises_a_redis_error_as_one_redis_does():
    with pytest.raises(RedisConnectionError):
        sync_client(UNREACHABLE)

    async def command():
        await async_client(UNREACHABLE).get("x")

    with pytest.raises(RedisError):
        asyncio.run(command())


def test_settings_for_a_cluster(redis_cluster, subprocess_env):
    env = dict(subprocess_env, REDIS_URL=redis_cluster, CELERY_RESULT_BACKEND="")
    script = (
        "from django.conf import settings; from django.core.cache import cache; "
        "cache.set('probe', 41); "
        "print(settings.CACHES['default']['BACKEND'], settings.CELERY_RESULT_BACKEND, "
        "cache.get('probe') + 1)"
    )

    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", script],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == [
        "saas_platform.redis_cache.ClusterRedisCache", "None", "42"
    ]  # fmt: skip


def test_healthz_on_a_cluster_and_on_one_that_cannot_be_reached(db, client, settings,
                                                                redis_cluster):  # fmt: skip
    settings.REDIS_URL = redis_cluster
    healthy = client.get("/healthz")
    settings.REDIS_URL = UNREACHABLE
    failing = client.get("/healthz")

    assert healthy.status_code == 200
    assert failing.status_code == 503
    assert failing.json()["failing"] == ["redis"]


def test_refusals_are_counted_from_sync_and_async_code(redis_url):
    refusals.count_refusal("budget")

    async def gateway():
        refusals.count_refusal("concurrency")
        refusals.count_refusal("concurrency")
        await asyncio.gather(*refusals._pending)

    asyncio.run(gateway())
    today = datetime.now(tz=UTC).date()

    assert sorted(refusals.refusals_per_day(today, today)) == [
        (today, "budget", 1), (today, "concurrency", 2),
    ]  # fmt: skip


def test_a_node_lock_admits_one_decision_at_a_time(redis_url):
    node = SimpleNamespace(name="gpu-1")
    inside, overlaps = [], []

    def decide():
        with node_lock(node):
            overlaps.append(len(inside))
            inside.append(1)
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=decide) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert overlaps == [0, 0, 0, 0]


def test_the_shared_resource_manager_on_both(redis_url):
    gateway, worker = (SharedResourceManager(100, name="node-x", redis_url=redis_url)
                       for _ in (1, 2))  # fmt: skip
    worker.load("a", 60)
    gateway.begin_request("a")

    assert [info.model_id for info in gateway.loaded_models()] == ["a"]
    gateway.end_request("a")
    assert worker.load("b", 60) == ["a"]
