"""EngineProcesses: real engine processes (llama.cpp's server on the bundled model, and Python's
own http.server as a quick stand-in where only the process matters), no mocks."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from models_mgmt.engines.errors import EngineError
from models_mgmt.engines.local import bundled_gguf
from models_mgmt.engines.process import EngineProcesses, EngineStartError, RunningEngine

ROOT = Path(__file__).resolve().parents[2]
LLAMA = (
    "{python} -m llama_cpp.server --model {path} --host {host} --port {port} "
    "--n_ctx 512 --n_threads 1"
)
# Serves the folder {path}, which holds a file v1/models: healthy in a fraction of a second.
STAND_IN = "{python} -m http.server {port} --bind {host} --directory {path}"


def live_pids(text: str) -> set[int]:
    """Live (not zombie) processes whose command line contains `text`."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in cmdline and state != "Z":
            pids.add(int(entry.name))
    return pids


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # TIME_WAIT connections left by the stopped server do not count; a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def state_dir(tmp_path) -> Path:
    return tmp_path / "engines"


@pytest.fixture
def model_path(tmp_path) -> str:
    # A link inside this test's folder: the command lines of this test's engines name it, so
    # /proc tells them from any other test's.
    link = tmp_path / "model.gguf"
    link.symlink_to(bundled_gguf())
    return str(link)


@pytest.fixture
def stand_in_dir(tmp_path) -> str:
    (tmp_path / "stand-in" / "v1").mkdir(parents=True)
    (tmp_path / "stand-in" / "v1" / "models").write_text('{"data": []}')
    return str(tmp_path / "stand-in")


@pytest.fixture(autouse=True)
def _no_stray_processes(tmp_path):
    """Whatever a failing test leaves running is killed, so it cannot slow the next ones."""
    yield
    for pid in live_pids(str(tmp_path)):
        os.kill(pid, signal.SIGKILL)


def test_engine_serves_chat_then_stop_frees_process_group_and_port(state_dir, model_path):
    engines = EngineProcesses(state_dir, start_timeout=60)

    engine = engines.start("smollm2", LLAMA, path=model_path)

    assert engine.base_url == f"http://127.0.0.1:{engine.port}/v1"
    response = httpx.post(
        f"{engine.base_url}/chat/completions",
        json={"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["role"] == "assistant"
    assert engines.start("smollm2", LLAMA, path=model_path) == engine  # no second process
    assert live_pids(model_path) == {engine.pid}
    assert engines.running() == [engine]
    assert engines.resident_bytes("smollm2") > 50 * 2**20  # the model's weights are mapped
    assert len(list(state_dir.glob("*.json"))) == 1  # its record

    assert engines.stop("smollm2") is True

    assert live_pids(model_path) == set()
    assert not group_exists(engine.pid)
    assert port_is_free(engine.port)
    assert engines.running() == []
    assert list(state_dir.glob("*.json")) == []
    assert engines.resident_bytes("smollm2") is None
    assert engines.stop("smollm2") is False
    assert engines.stop("never-started") is False


def test_engine_that_exits_at_once_raises_with_the_end_of_its_log(state_dir):
    engines = EngineProcesses(state_dir)
    template = "{python} -c \"import sys; print('cannot load the model'); sys.exit(3)\""

    with pytest.raises(EngineStartError) as raised:
        engines.start("broken", template)

    message = str(raised.value)
    assert "exited with code 3" in message
    assert "cannot load the model" in message
    log = next(state_dir.glob("*.log"))
    assert str(log) in message
    assert isinstance(raised.value, EngineError)
    assert raised.value.status == 502
    assert engines.running() == []
    assert list(state_dir.glob("*.json")) == []


def test_engine_that_never_answers_is_stopped_at_the_timeout(state_dir, tmp_path):
    engines = EngineProcesses(state_dir, start_timeout=2)
    marker = str(tmp_path / "sleeper")  # an argument the sleeper ignores, to find it by
    template = '{python} -c "import time; time.sleep(60)" {path}'
    started = time.monotonic()

    with pytest.raises(EngineStartError, match=r"did not answer on port .* within 2s"):
        engines.start("sleepy", template, path=marker)

    assert time.monotonic() - started < 10
    assert live_pids(marker) == set()
    assert engines.running() == []
    assert list(state_dir.glob("*.json")) == []


def test_bad_template_raises_without_starting_anything(state_dir):
    engines = EngineProcesses(state_dir)

    with pytest.raises(EngineStartError, match="not a valid template"):
        engines.start("typo", "{python} -m server --port {prot}")
    with pytest.raises(EngineStartError, match="Could not start"):
        engines.start("missing", "/nonexistent/engine-binary --port {port}")

    assert engines.running() == []
    assert list(state_dir.glob("*.json")) == []


def test_template_values_stay_one_argument_each(state_dir, stand_in_dir, tmp_path):
    spaced = tmp_path / "a folder with spaces"
    Path(stand_in_dir).rename(spaced)
    engines = EngineProcesses(state_dir)

    engine = engines.start("spaced", STAND_IN, path=str(spaced))

    assert httpx.get(f"{engine.base_url}/models").status_code == 200
    assert engines.stop("spaced") is True


def test_restarted_worker_finds_the_engine_and_drops_it_once_killed(state_dir, model_path):
    first = EngineProcesses(state_dir, start_timeout=60)
    engine = first.start("smollm2", LLAMA, path=model_path)

    restarted = EngineProcesses(state_dir, start_timeout=60)  # as a restarted worker would

    assert restarted.running() == [engine]
    assert restarted.reconcile().alive == ["smollm2"]
    assert restarted.start("smollm2", LLAMA, path=model_path).pid == engine.pid

    os.kill(engine.pid, signal.SIGKILL)
    assert wait_until(lambda: not live_pids(model_path))
    result = restarted.reconcile()

    assert result.alive == []
    assert result.removed == ["smollm2"]
    assert restarted.running() == []
    assert first.running() == []
    assert list(state_dir.glob("*.json")) == []


def test_a_recorded_pid_reused_by_another_process_is_not_ours(state_dir, stand_in_dir):
    engines = EngineProcesses(state_dir)
    engines.start("reused", STAND_IN, path=stand_in_dir)
    [record_file] = state_dir.glob("*.json")
    record = json.loads(record_file.read_text())
    engines.stop("reused")
    # The engine is gone and its pid now belongs to another process (this one), which
    # started at another time.
    record["pid"] = os.getpid()
    record_file.write_text(json.dumps(record))

    assert engines.resident_bytes("reused") is None
    assert engines.running() == []
    assert not record_file.exists()

    record_file.write_text(json.dumps(record))
    assert engines.reconcile().alive == []
    assert engines.stop("reused") is False
    record_file.write_text(json.dumps(record))
    assert engines.stop("reused") is False
    assert not record_file.exists()
    assert group_exists(os.getpgrp())  # nothing was sent to us: this test still runs


def test_reconcile_stops_an_engine_whose_record_was_never_written(state_dir, stand_in_dir):
    engines = EngineProcesses(state_dir)
    engine = engines.start("orphan", STAND_IN, path=stand_in_dir)
    # The worker died between spawning the engine and writing its record.
    next(state_dir.glob("*.json")).unlink()
    assert engines.running() == []

    result = EngineProcesses(state_dir).reconcile()

    assert result.removed == ["orphan"]
    assert live_pids(stand_in_dir) == set()
    assert port_is_free(engine.port)


def test_concurrent_starts_of_one_model_share_one_process(state_dir, stand_in_dir):
    engines = [EngineProcesses(state_dir) for _ in range(4)]  # as separate workers would

    with ThreadPoolExecutor(4) as pool:
        started = list(pool.map(lambda e: e.start("shared", STAND_IN, path=stand_in_dir), engines))

    assert len({engine.pid for engine in started}) == 1
    assert live_pids(stand_in_dir) == {started[0].pid}
    assert engines[0].stop("shared") is True


def test_reconcile_leaves_a_model_that_is_being_started_to_its_starter(state_dir, tmp_path):
    starter = EngineProcesses(state_dir, start_timeout=3)
    marker = str(tmp_path / "loading")
    errors = []

    def start():
        try:
            starter.start(
                "loading", '{python} -c "import time; time.sleep(60)" {path}', path=marker
            )
        except EngineStartError as error:
            errors.append(error)

    thread = threading.Thread(target=start)
    thread.start()
    assert wait_until(lambda: any(state_dir.glob("*.json")))

    result = EngineProcesses(state_dir).reconcile()

    assert result.busy == ["loading"]
    assert result.alive == result.removed == []
    assert live_pids(marker)  # still loading: not killed by the reconcile
    thread.join()
    assert len(errors) == 1  # the starter's own timeout stopped it
    assert live_pids(marker) == set()


WORKER = textwrap.dedent("""
    import os, django
    django.setup()
    from pathlib import Path
    from models_mgmt.engines.process import EngineProcesses
    engines = EngineProcesses(Path(os.environ["STATE_DIR"]), start_timeout=60)
    engines.start("smollm2", os.environ["TEMPLATE"], path=os.environ["MODEL_PATH"])
""")


def test_worker_killed_mid_load_leaves_no_unrecorded_engine(state_dir, model_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "saas_platform.settings",
        "STATE_DIR": str(state_dir),
        "TEMPLATE": LLAMA,
        "MODEL_PATH": model_path,
    }
    worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, env=env)
    try:
        # The record is written right after the engine is spawned: it is loading now.
        assert wait_until(lambda: any(state_dir.glob("*.json")), timeout=20)
        time.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert live_pids(model_path)  # the engine outlived its worker

    restarted = EngineProcesses(state_dir)
    result = restarted.reconcile()

    assert result.alive + result.removed == ["smollm2"]
    assert {engine.pid for engine in restarted.running()} == live_pids(model_path)
    assert len(live_pids(model_path)) == len(result.alive)  # kept and answering, or stopped
    restarted.stop("smollm2")
    assert live_pids(model_path) == set()


def test_running_engine_is_a_frozen_value():
    engine = RunningEngine("m", 1, 2, "http://127.0.0.1:2/v1", started_at=datetime.now(UTC))

    with pytest.raises(FrozenInstanceError):
        engine.pid = 3


# An engine whose main thread exits first on SIGTERM while another thread takes a while longer
# (as a server unmapping its model does): the leader is a zombie, unreapable until the rest
# exit, and its process group lives on meanwhile.
SLOW_EXIT = textwrap.dedent("""
    import ctypes, functools, http.server, os, signal, sys, threading, time
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    def slow_exit():
        time.sleep(1.5)
        os._exit(0)
    def on_term(*_):
        threading.Thread(target=slow_exit).start()
        ctypes.CDLL(None).pthread_exit(None)  # CDLL releases the GIL: the others go on
    signal.signal(signal.SIGTERM, on_term)
    while True:
        time.sleep(1)
""")


def test_stop_returns_only_once_the_whole_process_group_is_gone(state_dir, stand_in_dir):
    (Path(stand_in_dir) / "engine.py").write_text(SLOW_EXIT)
    engines = EngineProcesses(state_dir)
    engine = engines.start("slow", "{python} {path}/engine.py {port} {path}", path=stand_in_dir)

    started = time.monotonic()
    assert engines.stop("slow") is True

    assert not group_exists(engine.pid)  # not a zombie leader with threads still exiting
    assert time.monotonic() - started >= 1.4  # it did wait for the slow thread
    assert port_is_free(engine.port)
