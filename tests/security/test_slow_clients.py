"""Clients that connect and then dawdle: nothing sent, a header line now and then, half a head and
silence, an idle keep-alive. Each is cut within REQUEST_HEADER_TIMEOUT_SECONDS, and past
MAX_CONNECTIONS_PER_WORKER a worker answers 503 instead of taking more, so a few thousand such
sockets cannot hold a server (they all stayed open before)."""

import json
import re
import shlex
import socket
import subprocess
import time

import httpx
import pytest

from tests.conftest import ROOT
from tests.security.conftest import own_gateway
from tests.servers import SERVER_OPTIONS

HEAD_TIMEOUT = 2


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _closed_after(sock: socket.socket, *, within: float) -> tuple[float, bytes]:
    """Wait for the server to close `sock`: (seconds it took, what it sent before closing)."""
    started = time.monotonic()
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"still open after {within}s (received {received[:100]!r})")
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


@pytest.fixture
def slow_gateway(transactional_db, tmp_path):
    with own_gateway(tmp_path, workers=1, REQUEST_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
                     MAX_CONNECTIONS_PER_WORKER="40") as gateway:  # fmt: skip
        yield gateway


def test_make_serve_runs_the_server_options_the_tests_run():
    shown = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed",
         "-o", "node_modules/.installed", "serve"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.replace("\\\n", " ")  # fmt: skip
    (command,) = [line for line in shown.splitlines() if "uvicorn" in line]

    assert " ".join(SERVER_OPTIONS) in " ".join(shlex.split(command))


def test_a_connection_that_sends_nothing_is_closed(slow_gateway):
    sock = _connect(slow_gateway.url)

    elapsed, received = _closed_after(sock, within=HEAD_TIMEOUT + 5)

    assert HEAD_TIMEOUT - 0.5 <= elapsed < HEAD_TIMEOUT + 2
    assert received == b""  # nothing was asked: nothing to answer


def test_a_header_line_every_half_second_is_cut_with_408(slow_gateway):
    sock = _connect(slow_gateway.url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    lines = 0
    try:
        while time.monotonic() - started < 15:  # the old server took every line
            sock.sendall(f"X-Slow-{lines}: {'a' * 20}\r\n".encode())
            lines += 1
            time.sleep(0.5)
    except (BrokenPipeError, ConnectionResetError):
        pass
    elapsed = time.monotonic() - started
    _elapsed, received = _closed_after(sock, within=5)

    assert elapsed < HEAD_TIMEOUT + 2
    assert lines < 4 * (HEAD_TIMEOUT + 2)
    assert received.startswith(b"HTTP/1.1 408 ")
    body = received.partition(b"\r\n\r\n")[2]
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_half_a_head_then_silence_is_cut_with_408(slow_gateway):
    sock = _connect(slow_gateway.url)
    sock.sendall(b"POST /portal/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")

    elapsed, received = _closed_after(sock, within=HEAD_TIMEOUT + 5)

    assert elapsed < HEAD_TIMEOUT + 2
    assert received.startswith(b"HTTP/1.1 408 ")


def _whole_response(sock) -> bytes:
    """One response, head and body (its Content-Length), however the packets split it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
    while len(body) < length:
        body += sock.recv(65536)
    return data[: len(head) + 4] + body


def test_an_idle_keep_alive_connection_is_closed_even_after_one_more_byte(slow_gateway):
    """uvicorn's own keep-alive timer stops at the first byte of the next request."""
    sock = _connect(slow_gateway.url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first = _whole_response(sock)
    sock.sendall(b"G")

    elapsed, received = _closed_after(sock, within=HEAD_TIMEOUT + 5)

    assert first.startswith(b"HTTP/1.1 200 ")
    assert elapsed < HEAD_TIMEOUT + 2
    assert received.startswith(b"HTTP/1.1 408 ")


def test_a_request_on_a_kept_alive_connection_is_still_served(slow_gateway):
    with httpx.Client(base_url=slow_gateway.url) as client:
        first = client.get("/healthz")
        time.sleep(HEAD_TIMEOUT / 2)
        second = client.get("/healthz")

    assert (first.status_code, second.status_code) == (200, 200)


def test_past_the_connection_cap_requests_get_503_and_the_idle_ones_go(slow_gateway):
    """40 connections a worker: 60 idle sockets fill it; a request then gets 503 with
    Retry-After, and once the idle ones are cut (head timeout) requests are served again."""
    idle = [_connect(slow_gateway.url) for _ in range(60)]
    time.sleep(0.3)

    refused = httpx.get(f"{slow_gateway.url}/healthz", timeout=5)
    time.sleep(HEAD_TIMEOUT + 1)
    served = httpx.get(f"{slow_gateway.url}/healthz", timeout=5)
    still_open = 0
    for sock in idle:
        sock.settimeout(0.5)
        try:
            if sock.recv(1):
                still_open += 1
        except TimeoutError:
            still_open += 1
        except ConnectionResetError:
            pass
        sock.close()

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "service_unavailable"
    assert served.status_code == 200
    assert still_open == 0


def test_a_thousand_silent_connections_all_close_and_the_server_keeps_serving(
    transactional_db, tmp_path
):
    with own_gateway(tmp_path, workers=1,
                     REQUEST_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT)) as gateway:  # fmt: skip
        idle = [_connect(gateway.url) for _ in range(1000)]
        meanwhile = httpx.get(f"{gateway.url}/healthz", timeout=5)
        time.sleep(HEAD_TIMEOUT + 2)
        open_ = 0
        for sock in idle:
            sock.settimeout(0.05)
            try:
                if sock.recv(1):
                    open_ += 1
            except TimeoutError:
                open_ += 1
            except ConnectionResetError:
                pass
            sock.close()

    assert meanwhile.status_code == 200
    assert open_ == 0


def test_the_default_head_timeout_is_ten_seconds(gateway):
    sock = _connect(gateway.url)

    elapsed, _received = _closed_after(sock, within=20)

    assert 9.5 <= elapsed < 12.5
