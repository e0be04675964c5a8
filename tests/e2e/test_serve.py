"""`make serve`'s server, started as production starts it: a real ASGI server on a free port."""

import socket
import subprocess
import time

import httpx
import pytest

from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server_url(subprocess_env):
    port = _free_port()
    env = dict(subprocess_env, HOST="127.0.0.1", PORT=str(port), WORKERS="2")
    server = subprocess.Popen(
        ["make", "--no-print-directory", "serve"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=15)


def test_the_served_app_answers_healthz_and_the_admin(live_server_url):
    health = httpx.get(f"{live_server_url}/healthz", timeout=5)
    login = httpx.get(f"{live_server_url}/admin/login/", timeout=5)
    css = httpx.get(f"{live_server_url}/static/admin/css/base.css", timeout=5)

    assert health.status_code == 200
    assert health.json()["checks"] == ["database", "redis"]
    assert login.status_code == 200
    assert "csrfmiddlewaretoken" in login.text
    assert css.status_code == 200
    assert "text/css" in css.headers["content-type"]
