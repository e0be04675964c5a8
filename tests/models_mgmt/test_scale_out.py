"""Scale-out end to end: two node workers with real llama.cpp engines behind a gateway. A burst
on a model whose one replica is at capacity adds a second replica on the other node, both
serve, and the extra one goes away after its keep-alive while the first keeps serving."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connections

from models_mgmt.engines.local import bundled_gguf
from models_mgmt.engines.process import EngineProcesses
from models_mgmt.models import Placement
from models_mgmt.placements import node_add
from models_mgmt.services import model_register
from models_mgmt.tasks import node_tick
from tests.gateway_server import gateway_env, make_customer
from tests.models_mgmt.test_nodes_e2e import COMMAND, start_node_worker
from tests.servers import free_port, gateway_command, running

NODES = ("s1", "s2")
KEEP_ALIVE = 4


@pytest.fixture
def scale_env(tmp_path):
    # The broker is this run's own test Redis (REDIS_URL); tasks left on these nodes' queues by
    # an earlier run would be taken by this run's workers.
    redis.Redis.from_url(settings.REDIS_URL).delete(*(f"node.{name}" for name in NODES))
    return gateway_env(CELERY_BROKER_URL=settings.REDIS_URL, NODE_STATE_DIR=str(tmp_path / "nodes"),
                       MIN_RESIDENCY_SECONDS="2", SCALE_OUT_AFTER_SECONDS="1",
                       QUEUE_MAX_WAIT_SECONDS="120", ROUTING_LOAD_WAIT_SECONDS="90",
                       UPSTREAM_READ_TIMEOUT="60")  # fmt: skip


@pytest.fixture
def scale_workers(transactional_db, scale_env, tmp_path, settings):
    settings.NODE_STATE_DIR = scale_env["NODE_STATE_DIR"]  # the ticks below run in this process
    settings.MIN_RESIDENCY_SECONDS = 2
    for name in NODES:
        node_add(name=name, vram_bytes=300)
    workers = [start_node_worker(name, scale_env, tmp_path / f"{name}.log") for name in NODES]
    yield
    for worker in workers:
        worker.terminate()
        worker.wait(timeout=30)
    for name in NODES:  # engines outlive their worker by design
        EngineProcesses(Path(scale_env["NODE_STATE_DIR"]) / name).stop_all()


def served_by(state_dir: str, node: str) -> int:
    """Chat completions an engine of `node` answered, from its log (llama.cpp's access log)."""
    logs = (Path(state_dir) / node).glob("*.log")
    return sum(path.read_text(errors="replace").count("POST /v1/chat/completions") for path in logs)


def test_a_burst_adds_a_replica_on_the_other_node_and_it_leaves_after_its_keep_alive(
    scale_workers, scale_env, tmp_path
):
    model_register(model_id="scaled", engine="process", vram_bytes=100, command=COMMAND,
                   path=str(bundled_gguf()), keep_alive_seconds=KEEP_ALIVE,
                   max_concurrent_per_replica=1, max_replicas=2)  # fmt: skip
    port = free_port()
    customer = make_customer(SimpleNamespace(url=f"http://127.0.0.1:{port}"), slug="bursty",
                             max_concurrent_requests=20)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "scaled", "messages": [{"role": "user", "content": "Count to ten."}],
            "max_tokens": 16}  # fmt: skip
    headers = {"Authorization": f"Bearer {customer.key}"}

    def ready() -> set[str]:
        return set(Placement.objects.filter(model__model_id="scaled", state="ready")
                   .values_list("node__name", flat=True))  # fmt: skip

    async def burst(client, size: int) -> list[int]:
        sent = [client.post(url, json=body, headers=headers) for _ in range(size)]
        return [response.status_code for response in await asyncio.gather(*sent)]

    def tick() -> set[str]:
        for name in NODES:
            node_tick.apply(args=[name])
        return ready()

    # The database from one thread of its own (the ORM refuses an event loop's thread).
    orm = ThreadPoolExecutor(1)

    async def db(function):
        return await asyncio.get_running_loop().run_in_executor(orm, function)

    async def main():
        async with httpx.AsyncClient(timeout=180) as client:
            cold = await burst(client, 1)  # loads the first replica
            first = await db(ready)
            statuses = []
            deadline = time.monotonic() + 150
            while len(await db(ready)) < 2 and time.monotonic() < deadline:
                statuses += await burst(client, 4)  # 3 wait behind the one slot
            statuses += await burst(client, 4)  # both replicas serve these
            both = await db(ready)
            # One request at a time from now on, while the nodes tick: the replica the routing
            # prefers keeps serving, the other idles past its keep-alive and its tick unloads it.
            done = threading.Event()

            def ticking() -> set[str]:
                deadline = time.monotonic() + KEEP_ALIVE + 60
                while len(left := tick()) > 1 and time.monotonic() < deadline:
                    time.sleep(0.5)
                done.set()
                return left

            ticker = asyncio.get_running_loop().run_in_executor(orm, ticking)
            while not done.is_set():
                statuses += await burst(client, 1)
                await asyncio.sleep(0.3)
            left = await ticker
            statuses += await burst(client, 1)
            await db(connections.close_all)
            return cold, first, both, left, statuses

    with running(gateway_command(port, workers=1), env=scale_env, log=tmp_path / "gw.log",
                 ready_url=f"http://127.0.0.1:{port}/healthz"):  # fmt: skip
        cold, first, both, left, statuses = asyncio.run(main())

    assert cold == [200]
    assert len(first) == 1
    assert both == set(NODES)  # the second replica is on the other node
    assert all(status == 200 for status in statuses)
    state_dir = scale_env["NODE_STATE_DIR"]
    assert served_by(state_dir, "s1") > 0
    assert served_by(state_dir, "s2") > 0  # both served
    assert len(left) == 1  # the extra one went away; never below one while requests arrive
    assert Placement.objects.filter(model__model_id="scaled").count() == 1
