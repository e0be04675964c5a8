"""Real servers for end-to-end tests: started as subprocesses on free localhost ports, waited
for, and stopped at the end."""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(command: list[str], *, ready_url: str, env: dict | None = None, log: Path | None = None,
            timeout: float = 60):  # fmt: skip
    """Start `command`, wait until `ready_url` answers, yield the process, then stop it."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command, cwd=ROOT, env=env or dict(os.environ), stdout=out, stderr=out
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(ready_url, timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[:3]} exited with {process.returncode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ready_url} did not answer in {timeout}s") from None
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            out.close()


# The Makefile's SERVER_OPTIONS (tests/security/test_slow_clients.py checks they agree).
SERVER_OPTIONS = ["--http", "saas_platform.http_protocol:BoundedHttpToolsProtocol", "--ws", "none",
                  "--no-proxy-headers", "--no-access-log", "--lifespan", "off"]  # fmt: skip


def gateway_command(port: int, workers: int = 2) -> list[str]:
    """`make serve`'s server on `port` (quicker to stop)."""
    return [str(Path(sys.executable).parent / "uvicorn"), "saas_platform.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            *SERVER_OPTIONS, "--timeout-graceful-shutdown", "2"]  # fmt: skip


def celery_worker_command(*options: str) -> list[str]:
    """`celery worker` for this project as the README starts it, with `options` (e.g. "-B")."""
    return [sys.executable, "-m", "celery", "-A", "saas_platform", "worker", *options]
