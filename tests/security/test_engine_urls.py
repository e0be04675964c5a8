"""SSRF: only staff choose where the gateway sends requests (an engine's base URL, validated),
and nothing a tenant sends steers it anywhere else."""

import httpx
import pytest
from django.core.exceptions import ValidationError

from models_mgmt.engine_urls import validate_engine_base_url
from models_mgmt.models import ServedModel

GOOD = [
    "http://gpu-1:8000/v1",  # a single-label private host name
    "http://10.0.0.5:8000/v1",
    "https://192.168.1.20/v1",
    "http://127.0.0.1:8001/v1/",
    "http://[::1]:8000/v1",
    "https://engines.internal.example.com/llama/v1",
    "HTTP://GPU-1:8000/v1",
]
BAD = [
    ("file:///etc/passwd", "scheme must be http or https"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme must be http or https"),
    ("ftp://gpu-1/v1", "scheme must be http or https"),
    ("gpu-1:8000/v1", "scheme must be http or https"),
    ("http://admin:hunter2@gpu-1:8000/v1", "user name or password"),
    ("http://gpu-1@evil.example/v1", "user name or password"),
    ("http://gpu-1:8000/v1#frag", "fragment"),
    ("http://gpu-1:8000/v1?x=1", "query"),
    ("http:///v1", "needs a host"),
    ("http://:8000/v1", "needs a host"),
    ("http://gpu_1:8000/v1", "needs a host"),
    ("http://gpu-1:99999/v1", "port must be a number"),
    ("http://gpu-1:80a/v1", "port must be a number"),
    ("http://gpu-1:8000/v1\r\nHost: evil", "whitespace, control characters"),
    ("http://gpu-1\\@evil.example/v1", "whitespace, control characters or backslashes"),
    (" http://gpu-1/v1", "whitespace"),
]


@pytest.mark.parametrize("url", GOOD)
def test_engine_urls_operators_use_are_accepted(url):
    validate_engine_base_url(url)


@pytest.mark.parametrize(("url", "why"), BAD)
def test_other_engine_urls_are_refused_with_a_clear_reason(url, why):
    with pytest.raises(ValidationError) as refused:
        validate_engine_base_url(url)

    message = refused.value.messages[0]
    assert why in message
    assert "e.g. http://gpu-1:8000/v1" in message


@pytest.mark.parametrize(("url", "why"), [BAD[4]])
def test_register_command_refuses_a_bad_url_in_one_line_and_saves_nothing(manage, url, why):
    result = manage("models", "register", "llama", "--engine", "openai", "--base-url", url)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert why in result.stderr.strip().splitlines()[-1]
    assert not ServedModel.objects.exists()


def test_register_accepts_a_private_single_label_host(manage):
    result = manage("models", "register", "llama", "--engine", "openai",
                    "--base-url", "http://gpu-1:8000/v1")  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert ServedModel.objects.get(model_id="llama").base_url == "http://gpu-1:8000/v1"


def test_the_admin_form_refuses_a_bad_url(admin_client):
    response = admin_client.post("/admin/models_mgmt/servedmodel/add/", {
        "model_id": "llama", "engine": "openai", "task": "chat",
        "base_url": "file:///etc/passwd", "upstream_model": "", "vram_bytes": "0",
        "engine_settings": "{}", "keep_alive_seconds": "900", "enabled": "on",
    })  # fmt: skip

    assert response.status_code == 200
    assert "scheme must be http or https" in response.content.decode()
    assert not ServedModel.objects.exists()


def test_a_tenant_cannot_register_or_change_a_model(customer, gateway, canary):
    """Neither the inference API nor the management API has a way to set an engine URL."""
    headers = {"Authorization": f"Bearer {customer.key}"}
    attempts = [
        httpx.post(f"{gateway.url}/v1/models", headers=headers,
                   json={"id": "mine", "base_url": canary.url}),
        httpx.put(f"{gateway.url}/v1/models/fake", headers=headers,
                  json={"base_url": canary.url}),
        httpx.post(f"{gateway.url}/api/models", headers=headers,
                   json={"model_id": "mine", "base_url": canary.url}),
        httpx.post(f"{gateway.url}/admin/models_mgmt/servedmodel/add/", headers=headers,
                   data={"model_id": "mine", "engine": "openai", "base_url": canary.url}),
    ]  # fmt: skip

    assert all(400 <= a.status_code < 500 for a in attempts), [
        (a.request.url, a.status_code) for a in attempts
    ]
    assert not ServedModel.objects.filter(model_id="mine").exists()
    assert ServedModel.objects.get(model_id="fake").base_url != canary.url
    assert canary.hits == []


@pytest.mark.parametrize(
    "steer",
    [
        {"api_base": "{canary}/v1"},
        {"base_url": "{canary}/v1"},
        {"api_url": "{canary}/v1/chat/completions"},
        {"url": "{canary}"},
        {"endpoint": "{canary}/v1"},
        {"extra_body": {"base_url": "{canary}/v1"}},
    ],
)
def test_extra_body_fields_do_not_steer_the_gateway(customer, gateway, canary, steer):
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    for name, value in steer.items():
        body[name] = (
            value.format(canary=canary.url) if isinstance(value, str)
            else {k: v.format(canary=canary.url) for k, v in value.items()}
        )  # fmt: skip

    response = httpx.post(f"{customer.base_url}/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {customer.key}"})  # fmt: skip

    assert response.status_code == 200  # answered by the catalog's engine, the fake
    assert response.json()["object"] == "chat.completion"
    assert canary.hits == []


def test_model_ids_with_url_characters_are_unknown_models(customer, gateway, canary):
    headers = {"Authorization": f"Bearer {customer.key}"}
    host = canary.url.removeprefix("http://")
    for model in [
        f"{canary.url}/v1",
        f"fake@{host}",
        f"//{host}/v1",
        "../fake",
        "fake/../fake",
        f"fake?base_url={canary.url}",
        f"fake#{canary.url}",
        "fake\r\nHost: x",
    ]:
        response = httpx.post(
            f"{customer.base_url}/chat/completions",
            headers=headers,
            json={"model": model, "messages": [{"role": "user", "content": "x"}]},
        )
        assert response.status_code == 404, (model, response.text)
        assert response.json()["error"]["code"] == "model_not_found"
        if not any(c in model for c in ".?#\r"):  # the client would cut or normalize these
            lookup = httpx.get(f"{customer.base_url}/models/{model}", headers=headers)
            assert lookup.status_code == 404, (model, lookup.status_code)
    assert canary.hits == []


def test_host_headers_do_not_steer_the_gateway(customer, gateway, canary):
    host = canary.url.removeprefix("http://")
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    for extra in (
        {"Host": host},
        {"X-Forwarded-Host": host},
        {"Forwarded": f"host={host}"},
        {"X-Original-URL": f"{canary.url}/v1"},
        {"X-Forwarded-Proto": "gopher"},
    ):
        headers = {"Authorization": f"Bearer {customer.key}", **extra}
        response = httpx.post(f"{customer.base_url}/chat/completions", json=body,
                              headers=headers)  # fmt: skip
        # Either answered by the catalog's engine or refused as a bad host: never forwarded.
        assert response.status_code in (200, 400), (extra, response.status_code)
    assert canary.hits == []
