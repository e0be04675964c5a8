"""The findings of a probe against the running gateway (/v1/), each attack performed as it was:
guessed keys, streams the client stops reading, raw paths as metric labels, engine error text,
foreign Host headers and plain HTTP, NaN in a body."""

import json
import socket
import time

import httpx
import pytest

from tenants import apikeys
from tests.gateway_server import fake_model, make_customer
from tests.security.conftest import error_of, own_gateway

HI = [{"role": "user", "content": "hi"}]


def _chat(client, key, model="fake", **extra):
    return client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": model, "messages": HI, **extra})  # fmt: skip


def test_guessed_keys_are_refused_429_per_address_after_the_limit(
    tmp_path, transactional_db, catalog
):
    with own_gateway(tmp_path, AUTH_FAILURES_PER_MINUTE="5") as gateway:
        customer = make_customer(gateway)
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            # Keys with a valid checksum cost nothing to make: each is a database lookup.
            guesses = [_chat(client, apikeys.generate_key().plaintext) for _ in range(8)]
            honest_after = _chat(client, customer.key)
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(base_url=gateway.url, timeout=10, transport=other) as client:
            from_elsewhere = _chat(client, apikeys.generate_key().plaintext)

    assert [r.status_code for r in guesses] == [401] * 5 + [429] * 3
    error = error_of(guesses[-1], 429)
    assert error["code"] == "too_many_authentication_failures"
    assert 1 <= int(guesses[-1].headers["retry-after"]) <= 60
    # The limit is the address's: a key not already in the process's memory waits it out too.
    assert honest_after.status_code == 429
    assert from_elsewhere.status_code == 401  # another address is not punished


def _open_unread_stream(url: str, key: str, model: str) -> socket.socket:
    """Send a streaming request and never read the answer (a tiny receive buffer, so the
    server's sends back up as they would behind a slow or stuck client)."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": model, "stream": True, "messages": HI}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    return sock


def test_streams_the_client_never_reads_free_their_slots_at_the_deadline(
    tmp_path, transactional_db, catalog, fake_upstream_url
):
    endless = fake_model(fake_upstream_url, "endless", "chunks=100000&delay=0.005")
    with own_gateway(tmp_path, workers=2, UPSTREAM_TOTAL_TIMEOUT="4",
                     RESPONSE_WRITE_TIMEOUT_SECONDS="2") as gateway:  # fmt: skip
        customer = make_customer(gateway, max_concurrent_requests=2)
        sockets = [_open_unread_stream(gateway.url, customer.key, endless) for _ in range(2)]
        try:
            time.sleep(1)
            with httpx.Client(base_url=gateway.url, timeout=10) as client:
                while_held = _chat(client, customer.key)
                started = time.monotonic()
                freed = None
                while time.monotonic() - started < 15:
                    response = _chat(client, customer.key)
                    if response.status_code == 200:
                        freed = time.monotonic() - started
                        break
                    time.sleep(0.5)
        finally:
            for sock in sockets:
                sock.close()
        deadline = time.monotonic() + 10
        while True:
            events = [e for e in gateway.events() if e["model"] == endless]
            if len(events) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)

    assert while_held.status_code == 429
    assert freed is not None
    assert freed < 8  # the 4 s deadline, not the engine's 500 s
    assert len(events) == 2
    assert all(e["status"] in (499, 504) for e in events)
    assert all(e["completion_tokens"] > 0 for e in events)  # what was streamed is billed


def test_metric_labels_are_routes_not_raw_paths(gateway, customer):
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        headers = {"Authorization": f"Bearer {customer.key}"}
        for n in range(30):
            client.get(f"/v1/probe-{n}", headers=headers)
            client.get(f"/v1/models/secret-model-of-another-tenant-{n}", headers=headers)
        exported = client.get("/metrics").text

    assert "probe-" not in exported
    assert "secret-model-of-another-tenant" not in exported
    assert 'endpoint="/v1/{unknown}"' in exported
    assert 'endpoint="/v1/models/{model}"' in exported


def test_an_engine_failure_reaches_the_tenant_as_a_generic_message_and_the_log_in_full(
    gateway, customer, fake_upstream_url
):
    failing = fake_model(fake_upstream_url, "broken", "fail=500")
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        plain = _chat(client, customer.key, failing)
        streamed = _chat(client, customer.key, failing, stream=True)

    for response in (plain, streamed):
        error = error_of(response, 502)
        assert "fake failure" not in error["message"]  # the engine's own text
        assert response.headers["x-request-id"] in error["message"]
    time.sleep(0.5)
    assert "fake failure 500" in gateway.log_path.read_text()


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions"])
def test_a_foreign_host_header_is_refused_as_on_the_rest_of_the_site(gateway, customer, path):
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        response = client.request(
            "GET" if path.endswith("models") else "POST", path,
            headers={"Authorization": f"Bearer {customer.key}", "Host": "evil.example"},
            json={"model": "fake", "messages": HI},
        )  # fmt: skip

    assert error_of(response, 400)["code"] == "invalid_host"


def test_with_https_plain_http_is_refused_and_https_answers_with_hsts(
    tmp_path, transactional_db, catalog
):
    # The test's loopback client plays the TLS-ending proxy that says the request was HTTPS.
    with own_gateway(tmp_path, HTTPS="1", TRUSTED_PROXIES="127.0.0.1") as gateway:
        customer = make_customer(gateway)
        headers = {"Authorization": f"Bearer {customer.key}"}
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            plain = client.get("/v1/models", headers=headers)
            secure = client.get("/v1/models", headers={**headers, "X-Forwarded-Proto": "https"})

    assert error_of(plain, 403)["code"] == "https_required"
    assert secure.status_code == 200
    assert secure.headers["strict-transport-security"].startswith("max-age=")


def test_nan_and_infinity_in_a_body_are_a_400_not_a_500(gateway, customer):
    raw = b'{"model": "fake", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        headers = {"Authorization": f"Bearer {customer.key}", "Content-Type": "application/json"}
        response = client.post("/v1/chat/completions", content=raw, headers=headers)

    assert "not valid JSON" in error_of(response, 400)["message"]


def _engine_bodies(canary) -> list[dict]:
    """The chat requests the engine received (not the gateway's token-count calls)."""
    return [json.loads(body) for (_method, path), body in zip(canary.hits, canary.bodies,
                                                              strict=True)
            if path.endswith("/chat/completions")]  # fmt: skip


def test_only_openai_fields_and_the_models_allowed_extras_reach_the_engine(
    gateway, customer, canary
):
    from models_mgmt.services import model_register

    model_register(model_id="canaried", engine="openai", base_url=f"{canary.url}/v1",
                   extra_fields=["top_k"])  # fmt: skip
    hostile = {"api_base": "http://169.254.169.254", "base_url": "http://10.0.0.5",
               "n_predict": 100000, "ignore_eos": True, "min_tokens": 5000,
               "best_of": 20}  # fmt: skip
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        response = _chat(client, customer.key, "canaried", temperature=0.5, top_k=40, **hostile)

    assert response.status_code == 200, response.text
    [sent] = _engine_bodies(canary)
    assert sent["temperature"] == 0.5
    assert sent["top_k"] == 40  # staff allowed it for this model
    assert not set(hostile) & set(sent)


@pytest.mark.parametrize(
    ("allow_images", "url", "expected"),
    [
        (False, "https://example.com/cat.png", "does not accept images"),
        (True, "http://169.254.169.254/latest/meta-data/", "data: URL or an https URL"),
        (True, "https://169.254.169.254/latest/meta-data/", "public address"),
        (True, "https://127.0.0.1/", "public address"),
        (True, "https://localhost/", "public address"),
    ],
)
def test_image_parts_are_refused_unless_allowed_and_public(
    gateway, customer, canary, allow_images, url, expected
):
    from models_mgmt.services import model_register

    model_register(model_id="eyes", engine="openai", base_url=f"{canary.url}/v1",
                   allow_images=allow_images)  # fmt: skip
    parts = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": url}}]  # fmt: skip
    messages = [{"role": "user", "content": parts}]
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        response = client.post("/v1/chat/completions",
                               headers={"Authorization": f"Bearer {customer.key}"},
                               json={"model": "eyes", "messages": messages})  # fmt: skip

    assert expected in error_of(response, 400)["message"]
    assert canary.hits == []  # refused before anything reached the engine


def test_a_data_url_image_reaches_a_model_that_allows_images(gateway, customer, canary):
    from models_mgmt.services import model_register

    model_register(model_id="eyes", engine="openai", base_url=f"{canary.url}/v1",
                   allow_images=True)  # fmt: skip
    pixel = "data:image/png;base64,iVBORw0KGgo="
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": pixel}}]}]
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        response = client.post("/v1/chat/completions",
                               headers={"Authorization": f"Bearer {customer.key}"},
                               json={"model": "eyes", "messages": messages})  # fmt: skip

    assert response.status_code == 200, response.text
    assert _engine_bodies(canary)[0]["messages"] == messages
