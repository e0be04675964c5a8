"""The shared ResourceManager as two processes see it: two managers on one node's state."""

import threading
import time
import uuid

import pytest

from models_mgmt.resource_manager import CapacityError
from models_mgmt.shared_resource_manager import SharedResourceManager


@pytest.fixture
def pair(settings):
    name = f"node-{uuid.uuid4().hex}"
    return [SharedResourceManager(100, name=name, redis_url=settings.REDIS_URL) for _ in (1, 2)]


def test_a_request_begun_in_one_process_protects_the_model_from_the_other(pair):
    gateway, worker = pair
    worker.load("a", 60)
    gateway.begin_request("a")

    with pytest.raises(CapacityError):
        worker.load("b", 60)

    assert [info.model_id for info in worker.loaded_models()] == ["a"]
    gateway.end_request("a")
    assert worker.load("b", 60) == ["a"]
    assert gateway.stats() == (60, 100, 1)


def test_concurrent_loads_from_two_processes_never_exceed_the_budget(pair):
    evicted = []
    for manager in pair:
        manager.set_evict_callback(evicted.append)

    def load_many(manager, offset):
        for index in range(30):
            manager.load(f"m{(index + offset) % 7}", 15 + index % 4 * 10)
            used, budget, _count = manager.stats()
            assert used <= budget

    threads = [threading.Thread(target=load_many, args=(m, i * 3)) for i, m in enumerate(pair)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    used, budget, count = pair[0].stats()
    assert used <= budget
    assert used == sum(info.vram_bytes for info in pair[1].loaded_models())
    assert count == len(pair[1].loaded_models())
    assert evicted  # the budget forced evictions


def test_a_waiting_load_gets_room_when_another_process_ends_a_request(pair):
    gateway, worker = pair
    worker.load("a", 80)
    gateway.begin_request("a")
    threading.Timer(0.3, gateway.end_request, args=["a"]).start()

    started = time.monotonic()
    evicted = worker.load("b", 50, wait_seconds=5)

    assert evicted == ["a"]
    assert time.monotonic() - started >= 0.25
    assert worker.waiting == 0
