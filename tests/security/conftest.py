"""Fixtures for hostile-input tests: a canary server that records anything sent to it (the
address a tenant would like the gateway to call), a gateway of a test's own (when it needs other
settings than the shared one), and tenants with ledger data on a database the gateway sees."""

import email
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.gateway_server import Gateway, gateway_env
from tests.servers import free_port, gateway_command, running


class Canary:
    """An HTTP server on localhost that answers 200 to anything and remembers every request."""

    def __init__(self):
        self.hits: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []  # what each request carried
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                canary.hits.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                canary.bodies.append(self.rfile.read(length) if length else b"")
                body = json.dumps({"canary": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _record

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.fixture
def canary():
    server = Canary()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@contextmanager
def own_gateway(tmp_path, workers: int = 1, **settings):
    """A gateway with these settings (environment variables), for tests that change what the
    shared session gateway runs with. Needs the test database (transactional_db)."""
    port = free_port()
    usage, log = tmp_path / "usage.ndjson", tmp_path / "gateway.log"
    env = gateway_env(USAGE_NDJSON_PATH=str(usage), **settings)
    with running(gateway_command(port, workers=workers), env=env, log=log,
                 ready_url=f"http://127.0.0.1:{port}/healthz"):  # fmt: skip
        yield Gateway(url=f"http://127.0.0.1:{port}", usage_path=usage, log_path=log)


def error_of(response, status: int) -> dict:
    """The OpenAI-shaped error of `response`, after checking its status and shape."""
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["message"]
    return error


def post_form(client, path: str, data: dict, *, token_from: str | None = None, **options):
    """Post a portal or admin form as a browser does: GET it (or the page `token_from`) for its
    CSRF token, then POST."""
    page = client.get(token_from or path)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return client.post(path, data={"csrfmiddlewaretoken": token, **data}, **options)


@dataclass(frozen=True)
class Sent:
    to: str
    subject: str
    body: str


@contextmanager
def signed_in(base_url: str, username: str, password: str, *, login: str = "/portal/login/"):
    """An HTTP client signed in to the portal (or, with login="/admin/login/", the admin)."""
    with httpx.Client(base_url=base_url) as client:
        answer = post_form(client, login, {"username": username, "password": password})
        assert answer.status_code == 302, answer.text[:300]
        yield client


def sent_mail(folder) -> list[Sent]:
    """The messages a server with the file-based email backend wrote to `folder`, in order."""
    if not folder.exists():
        return []
    messages = []
    for path in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        # A file can hold several messages, each followed by a line of dashes.
        for raw in path.read_text().split("\n" + "-" * 79 + "\n"):
            if raw.strip():
                message = email.message_from_string(raw.lstrip())
                body = message.get_payload(decode=True).decode()
                messages.append(Sent(message["To"], message["Subject"], body))
    return messages
