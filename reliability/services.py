"""The processes a reliability run owns: its own Redis and PostgreSQL (so it may kill and restart
them without touching the machine's), and the project's own processes (gateways, Celery
workers, the fake engine) started as an operator starts them. Everything listens on loopback,
and everything writes its log under var/reliability/logs."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import SERVER_OPTIONS  # make serve's options, as the tests' servers use

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "reliability"
LOGS = VAR / "logs"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, *, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001, S110 - not ready yet: keep polling until the deadline
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


class Proc:
    """One long-running child process, restartable, killable with any signal."""

    def __init__(self, name: str, command: list[str], env: dict, ready_url: str | None = None):
        self.name, self.command, self.env, self.ready_url = name, command, env, ready_url
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, *, timeout: float = 60) -> "Proc":
        log = open(LOGS / f"{self.name}.log", "ab")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        self.starts += 1
        if self.ready_url:
            wait_until(self._answers, timeout=timeout, what=f"{self.name} start")
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
        httpx.get(self.ready_url, timeout=2)
        return True

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop it and everything it started (its own session, e.g. Celery's pool)."""
        if not self.alive():
            return
        with _suppress_gone():
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with _suppress_gone():
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


class _suppress_gone:
    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        return kind is not None and issubclass(kind, ProcessLookupError)


class OwnRedis:
    """redis-server on a free port. No RDB snapshots; an append-only file fsynced at every write,
    as a deployment that treats the usage stream as a durable buffer must run it."""

    def __init__(self):
        self.port = free_port()
        self.dir = VAR / "redis"
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = Proc("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                                   "--dir", str(self.dir)], dict(os.environ))  # fmt: skip

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc.start()
        import redis

        wait_until(lambda: redis.Redis.from_url(self.url).ping(), timeout=20, what="redis")

    def kill(self) -> None:
        self.proc.kill(signal.SIGKILL)

    def version(self) -> str:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
        return out.split()[2].removeprefix("v=")


class OwnPostgres:
    """A PostgreSQL cluster of our own in var/reliability/pg, run as the `postgres` OS user."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
        if not bins:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = Path(bins[-1])
        self.port = free_port()
        self.dir = VAR / "pg"
        self.socket_dir = VAR / "pgsock"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/reliability"

    def _as_postgres(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, check=check,
                              timeout=120)  # fmt: skip

    def init(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        for folder in (self.dir, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(folder, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres",
                          "-A", "trust", "--no-sync")  # fmt: skip
        self.start()
        self._as_postgres(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", "reliability")  # fmt: skip

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=200")  # fmt: skip
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-o", options,
                          "-l", str(self.dir / "server.log"), "-w", "start")  # fmt: skip

    def stop_immediate(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "stop")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "fast", "stop",
                          check=False)  # fmt: skip

    def version(self) -> str:
        out = self._as_postgres(str(self.bin / "postgres"), "--version").stdout
        return out.split()[2]  # postgres (PostgreSQL) 15.20 (Debian ...)


def prepare_folders() -> None:
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(VAR / "redis", ignore_errors=True)
    shutil.rmtree(VAR / "nodes", ignore_errors=True)
    for name in ("upstream.ndjson", "usage.ndjson"):
        (VAR / name).unlink(missing_ok=True)


def gateway(name: str, port: int, env: dict) -> Proc:
    command = [str(BIN / "uvicorn"), "saas_platform.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", *SERVER_OPTIONS,
               "--timeout-graceful-shutdown", "2"]  # fmt: skip
    return Proc(name, command, env, ready_url=f"http://127.0.0.1:{port}/healthz")


def fake_upstream(port: int, env: dict) -> Proc:
    command = [sys.executable, "-m", "tests.fakes.upstream", str(port)]
    return Proc("upstream", command, env, ready_url=f"http://127.0.0.1:{port}/v1/models")


def ledger_worker(env: dict, name: str = "ledger") -> Proc:
    """The billing worker as the README runs it: default queue, with its beat."""
    command = [sys.executable, "-m", "celery", "-A", "saas_platform", "worker", "-B",
               "--concurrency", "1", "--loglevel", "INFO", "--hostname", f"{name}@%h"]  # fmt: skip
    return Proc(name, command, env)


def node_worker(node: str, env: dict) -> Proc:
    command = [sys.executable, "-m", "celery", "-A", "saas_platform", "worker", "-Q",
               f"node.{node}", "--pool", "solo", "--hostname", f"{node}@%h",
               "--loglevel", "INFO"]  # fmt: skip
    return Proc(f"node-{node}", command, dict(env, NODE_NAME=node))
