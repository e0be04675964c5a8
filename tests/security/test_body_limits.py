"""Bodies that are too big, too slow or absurd get a clear 4xx in OpenAI's shape, are cut in
bounded time and memory, and never hold a server process."""

import json
import select
import socket
import time

import httpx
import pytest

from tests.gateway_server import make_customer
from tests.security.conftest import error_of, own_gateway

HI = [{"role": "user", "content": "hi"}]


def _open(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _request_head(path: str, key: str | None, extra: str) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()  # fmt: skip


def test_a_trickled_body_gets_408_in_bounded_time_and_holds_no_server(
    transactional_db, catalog, tmp_path
):
    with own_gateway(tmp_path, workers=1, REQUEST_BODY_TIMEOUT_SECONDS="2") as gateway:
        acme = make_customer(gateway)
        body = json.dumps({"model": "fake", "messages": HI}).encode()
        slow = _open(gateway.url)
        slow.sendall(_request_head("/v1/chat/completions", acme.key,
                                   f"Content-Length: {len(body)}\r\n"))  # fmt: skip
        started = time.monotonic()

        # One server process: while the slow client trickles, others are still served.
        trickled, answered_meanwhile = 0, None
        while time.monotonic() - started < 10 and not select.select([slow], [], [], 0)[0]:
            try:
                slow.sendall(body[trickled : trickled + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            trickled += 1
            if answered_meanwhile is None:
                answered_meanwhile = httpx.post(f"{acme.base_url}/chat/completions", timeout=5,
                                                headers={"Authorization": f"Bearer {acme.key}"},
                                                json={"model": "fake", "messages": HI})  # fmt: skip
            time.sleep(0.2)
        status, headers, payload = _read_response(slow)
        elapsed = time.monotonic() - started
        slow.close()
        # The limit holds on every path, not only /v1/: the admin's sign-in form too.
        admin = _open(gateway.url)
        admin.sendall(b"POST /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/x-www-form-urlencoded\r\n"
                      b"Content-Length: 1000\r\n\r\nusername=")  # fmt: skip
        admin_started = time.monotonic()
        admin_status = _read_response(admin)[0]
        admin_elapsed = time.monotonic() - admin_started
        admin.close()

    assert status == 408
    error = json.loads(payload)["error"]
    assert (error["code"], error["type"]) == ("request_timeout", "invalid_request_error")
    assert headers["connection"] == "close"
    assert 2 <= elapsed < 5
    assert trickled < len(body)  # cut before the body was complete
    assert answered_meanwhile.status_code == 200
    assert admin_status == 408
    assert admin_elapsed < 5
    # Nothing was admitted or recorded for the cut request: one event, the other request's.
    assert len(gateway.events()) == 1


def test_a_declared_oversize_body_is_refused_before_it_is_read(customer, gateway):
    sock = _open(gateway.url)
    sock.sendall(_request_head("/v1/chat/completions", customer.key,
                               "Content-Length: 10000000000\r\n"))  # fmt: skip

    status, headers, payload = _read_response(sock)
    sock.close()

    assert status == 413
    assert json.loads(payload)["error"]["code"] == "request_too_large"
    assert headers["x-request-id"].startswith("req_")


def test_a_chunked_body_past_the_limit_is_cut_near_the_limit(customer, gateway):
    """No Content-Length: the server counts, and answers 413 once the limit is passed, long
    before the client's 200 MB are sent."""
    sock = _open(gateway.url)
    sock.sendall(_request_head("/v1/chat/completions", customer.key,
                               "Transfer-Encoding: chunked\r\n"))  # fmt: skip
    piece = b"x" * 65536
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    sock.settimeout(5)
    try:
        while sent < 200_000_000:
            sock.sendall(frame)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    status, _headers, payload = _read_response(sock)
    sock.close()

    assert status == 413
    assert json.loads(payload)["error"]["code"] == "request_too_large"
    # 4 MiB limit, plus what the kernel's socket buffers absorbed before the server closed.
    assert sent < 40_000_000


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 10**18}, "max_tokens"),
        ({"max_tokens": 2**64}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_completion_tokens": 10**30}, "max_completion_tokens"),
        ({"n": 10**9}, "n"),
        ({"stream": True, "stream_options": "yes"}, "stream_options"),
        ({"stream": True, "stream_options": [1, 2]}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": "true"}},
         "stream_options.include_usage"),
        ({"stream": True, "stream_options": {"include_usage": {"a": [1] * 1000}}},
         "stream_options.include_usage"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)  # fmt: skip
def test_absurd_limits_and_junk_stream_options_get_a_clear_400(customer, gateway, extra, param):
    response = httpx.post(f"{customer.base_url}/chat/completions",
                          headers={"Authorization": f"Bearer {customer.key}"},
                          json={"model": "fake", "messages": HI, **extra})  # fmt: skip

    error = error_of(response, 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert gateway.events_for([response.headers["x-request-id"]], expected=[], timeout=0) == []


def test_deeply_nested_json_is_a_400_not_a_crash(customer, gateway):
    body = b'{"model": "fake", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    response = httpx.post(f"{customer.base_url}/chat/completions", content=body,
                          headers={"Authorization": f"Bearer {customer.key}",
                                   "Content-Type": "application/json"})  # fmt: skip

    assert error_of(response, 400)["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/portal/login/", "/healthz", "/api/usage.csv", "/admin/login/"])
def test_outside_v1_a_declared_oversize_body_gets_413_before_a_byte_of_it_is_sent(gateway, path):
    """No key, no session: 1.5 GB announced to a sign-in form is refused from the header alone
    (it used to be read, to disk, before anything looked at it)."""
    sock = _open(gateway.url)
    sock.settimeout(5)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Type: application/x-www-form-urlencoded\r\n"
                 "Content-Length: 1500000000\r\n\r\n".encode())  # fmt: skip
    started = time.monotonic()

    status, headers, payload = _read_response(sock)
    sock.close()

    assert status == 413
    assert time.monotonic() - started < 2
    assert json.loads(payload)["error"]["code"] == "request_too_large"
    assert headers["connection"] == "close"


def test_outside_v1_a_chunked_body_is_counted_and_cut_near_the_limit(gateway):
    sock = _open(gateway.url)
    sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    piece = b"x" * 65536
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    sock.settimeout(5)
    try:
        while sent < 300_000_000:
            sock.sendall(frame)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    status, _headers, payload = _read_response(sock)
    sock.close()

    assert status == 413
    assert json.loads(payload)["error"]["code"] == "request_too_large"
    # 1 MiB limit, plus what the kernel's socket buffers absorbed before the server closed.
    assert sent < 20_000_000


def test_a_form_under_the_limit_still_reaches_its_page(gateway, transactional_db):
    body = "username=alice&password=" + "x" * 900_000
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    response = httpx.post(f"{gateway.url}/portal/login/", content=body, headers=form, timeout=10)

    assert response.status_code == 403  # Django's CSRF refusal: the form was read, not cut
    assert "CSRF" in response.text
