"""Model management end to end: two nodes with their own Celery workers and queues, real
llama.cpp engine processes, small byte budgets, and a gateway routing requests to them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from models_mgmt.engines.local import bundled_gguf
from models_mgmt.engines.process import EngineProcesses
from models_mgmt.models import Node, Placement
from models_mgmt.placements import engine_processes, node_add
from models_mgmt.services import model_register
from models_mgmt.tasks import node_tick
from tests.gateway_server import gateway_env, make_customer
from tests.servers import ROOT, free_port, gateway_command, running

BROKER = "redis://127.0.0.1:6379/11"
COMMAND = "{python} -m llama_cpp.server --model {path} --host {host} --port {port} --n_ctx 512"
HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture
def node_env(tmp_path):
    # The broker is the tests' own Redis database: a task left there by an earlier run would
    # be taken by this run's workers.
    redis.Redis.from_url(BROKER).flushdb()
    return gateway_env(CELERY_BROKER_URL=BROKER, NODE_STATE_DIR=str(tmp_path / "nodes"),
                       MIN_RESIDENCY_SECONDS="0", ROUTING_LOAD_WAIT_SECONDS="90")  # fmt: skip


def start_node_worker(name: str, env: dict, log_path) -> subprocess.Popen:
    """A node's worker as an operator runs it: its own queue, one decision at a time."""
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it; closed when it exits
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "saas_platform", "worker", "-Q", f"node.{name}",
         "--pool", "solo", "--hostname", f"{name}@%h", "--loglevel", "INFO"],
        cwd=ROOT, env=dict(env, NODE_NAME=name), stdout=log, stderr=log,
    )  # fmt: skip


@pytest.fixture
def node_workers(transactional_db, node_env, tmp_path):
    for name in ("n1", "n2"):
        node_add(name=name, vram_bytes=300)
    workers = [start_node_worker(name, node_env, tmp_path / f"{name}.log") for name in ("n1", "n2")]
    yield
    for worker in workers:
        worker.terminate()
        worker.wait(timeout=30)
    # Engines outlive their worker by design (a restarted worker finds them): stop them here.
    for name in ("n1", "n2"):
        EngineProcesses(Path(node_env["NODE_STATE_DIR"]) / name).stop_all()


def test_three_models_on_two_small_nodes_load_evict_and_answer(
    gateway, catalog, node_workers, node_env, tmp_path, settings
):
    settings.NODE_STATE_DIR = node_env["NODE_STATE_DIR"]  # to read the workers' records
    for model_id in ("m1", "m2", "m3"):
        model_register(model_id=model_id, engine="process", vram_bytes=200, command=COMMAND,
                       path=str(bundled_gguf()), keep_alive_seconds=0)  # fmt: skip
    customer = make_customer(gateway)
    port = free_port()
    customer.base_url = f"http://127.0.0.1:{port}/v1"
    with running(gateway_command(port, workers=1), env=node_env, log=tmp_path / "gw.log",
                 ready_url=f"http://127.0.0.1:{port}/healthz"):  # fmt: skip
        client = customer.client(timeout=120)
        answers = []
        for model_id in ["m1", "m2", "m3", "m1", "m2", "m3"]:
            completion = client.chat.completions.create(model=model_id, messages=HI, max_tokens=4)
            answers.append(completion.model)
            for node in Node.objects.all():
                held = sum(p.vram_bytes for p in node.placements.all() if p.holds_memory)
                assert held <= node.vram_budget_bytes
        placements = {p.model.model_id: p.node.name for p in Placement.objects.all()}
        evicted = ({"m1", "m2", "m3"} - set(placements)).pop()
        streamed = sorted(placements)[0]
        # A long answer from one model while a request for the evicted one needs room: the
        # eviction takes the idle model on the other node and cuts nothing.
        stream = client.chat.completions.create(
            model=streamed, messages=[{"role": "user", "content": "Tell a long story."}],
            max_tokens=120, stream=True,
        )  # fmt: skip
        chunks = [next(stream)]
        cold = client.chat.completions.create(model=evicted, messages=HI, max_tokens=4)
        chunks += list(stream)
        after = {p.model.model_id: p.node.name for p in Placement.objects.all()}

    for node in Node.objects.all():  # a node's tick records what its engines really hold
        node_tick.apply(args=[node.name])
    measured = Placement.objects.values_list("measured_bytes", "measured_source")
    assert all(size > 50 * 2**20 and source == "resident" for size, source in measured)

    assert answers == ["m1", "m2", "m3", "m1", "m2", "m3"]  # every request answered
    assert cold.model == evicted
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")  # the stream was not cut
    assert streamed in after
    assert after[evicted] == placements[sorted(set(placements) - {streamed})[0]]
    assert len(placements) == 2  # three models, room for two: one was evicted
    for node in Node.objects.all():
        running_engines = {engine.model_id for engine in engine_processes(node).running()}
        placed = set(node.placements.values_list("model__model_id", flat=True))
        assert running_engines == placed  # evicted models' processes are gone


def test_a_worker_killed_mid_load_reconciles_with_the_processes_that_really_run(
    transactional_db, node_env, tmp_path, settings
):
    settings.NODE_STATE_DIR = node_env["NODE_STATE_DIR"]
    node = node_add(name="n9", vram_bytes=1000)
    model = model_register(model_id="m9", engine="process", vram_bytes=100, command=COMMAND,
                           path=str(bundled_gguf()))  # fmt: skip
    worker = start_node_worker("n9", node_env, tmp_path / "n9.log")
    try:
        queued = subprocess.run(
            [sys.executable, "manage.py", "models", "load", "m9", "--node", "n9"],
            cwd=ROOT, env=node_env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert queued.returncode == 0, queued.stderr
        deadline = time.monotonic() + 60
        while not Placement.objects.filter(node=node, state=Placement.State.LOADING).exists():
            assert time.monotonic() < deadline, "the load never started"
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)  # mid-load: the engine process is starting
        worker.wait(timeout=10)
        worker = start_node_worker("n9", node_env, tmp_path / "n9.log")
        deadline = time.monotonic() + 60
        while Placement.objects.filter(node=node, state=Placement.State.LOADING).exists():
            assert time.monotonic() < deadline, "the restarted worker did not reconcile"
            time.sleep(0.2)
        placed = set(node.placements.values_list("model__model_id", flat=True))
        running_engines = {engine.model_id for engine in engine_processes(node).running()}
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        engine_processes(node).stop(model.model_id)

    assert placed == running_engines  # no phantom bytes, no engine nobody accounts for
    assert placed == set()
