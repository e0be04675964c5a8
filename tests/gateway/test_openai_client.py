"""The official `openai` client, unchanged, against every endpoint: the local engine, llama.cpp's
own server and the fake engine; sync and async; streaming and not."""

import asyncio
from datetime import timedelta

import httpx
import openai
import pytest

from models_mgmt.services import model_register
from tenants import apikeys, services
from tests.gateway_server import make_customer


def test_models_list_shows_the_enabled_models_the_tenant_may_use(gateway, catalog):
    everything = make_customer(gateway, slug="all")
    limited = make_customer(gateway, slug="limited", model_allow_list=["smol"])

    assert sorted(m.id for m in everything.client().models.list()) == ["e5", "fake", "smol"]
    assert [m.id for m in limited.client().models.list()] == ["smol"]
    assert limited.client().models.retrieve("smol").id == "smol"
    with pytest.raises(openai.NotFoundError):
        limited.client().models.retrieve("e5")


def test_chat_completion_on_the_local_model(customer, gateway):
    response = customer.client().chat.completions.with_raw_response.create(
        model="smol", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    completion = response.parse()

    assert completion.model == "smol"
    assert completion.choices[0].message.content.strip()
    assert completion.usage.completion_tokens > 0
    assert completion.usage.prompt_tokens > 0
    request_id = response.headers["x-request-id"]
    [event] = gateway.events_for([request_id])
    assert event["prompt_tokens"] == completion.usage.prompt_tokens
    assert event["completion_tokens"] == completion.usage.completion_tokens
    assert event["usage_source"] == "reported"
    assert event["tenant_id"] == str(customer.tenant.pk)
    assert event["model"] == "smol"
    assert event["status"] == 200


def test_streamed_chat_on_the_local_model_passes_chunks_and_usage_when_asked(customer, gateway):
    with customer.client().chat.completions.with_streaming_response.create(
        model="smol",
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert all(chunk.model == "smol" for chunk in chunks)
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage.completion_tokens > 0
    [event] = gateway.events_for([request_id])
    assert (event["prompt_tokens"], event["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_completions_and_embeddings_on_the_local_models(customer):
    client = customer.client()

    completion = client.completions.create(model="smol", prompt="The sky is", max_tokens=5)
    embedded = client.embeddings.create(model="e5", input=["hello", "world"])
    as_floats = client.embeddings.create(model="e5", input="hello", encoding_format="float")

    assert completion.choices[0].text
    assert completion.usage.completion_tokens > 0
    assert [len(item.embedding) for item in embedded.data] == [384, 384]
    assert embedded.usage.prompt_tokens > 0
    assert as_floats.data[0].embedding == pytest.approx(embedded.data[0].embedding, abs=1e-5)


def test_async_client_streams_and_completes_against_llama_cpp_server(
    gateway, catalog, llama_server_url
):
    model_register(model_id="llama-server", engine="openai", base_url=llama_server_url,
                   upstream_model="smollm2")  # fmt: skip
    customer = make_customer(gateway)
    client = customer.async_client()

    async def run():
        completion = await client.chat.completions.create(
            model="llama-server", messages=[{"role": "user", "content": "Hi"}], max_tokens=6
        )
        stream = await client.chat.completions.create(
            model="llama-server",
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=10,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        legacy = await client.completions.create(model="llama-server", prompt="Once", max_tokens=4)
        return completion, chunks, legacy

    completion, chunks, legacy = asyncio.run(run())

    assert completion.model == "llama-server"
    assert completion.choices[0].message.content
    assert completion.usage.total_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(chunk.usage is None for chunk in chunks)  # the client did not ask for usage
    assert legacy.choices[0].text


def test_llama_cpp_server_streams_without_usage_so_the_gateway_counts(
    gateway, catalog, llama_server_url
):
    model_register(model_id="llama-server", engine="openai", base_url=llama_server_url,
                   upstream_model="smollm2")  # fmt: skip
    customer = make_customer(gateway)

    with customer.client().chat.completions.with_streaming_response.create(
        model="llama-server",
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())

    [event] = gateway.events_for([request_id])
    assert event["usage_source"] == "counted"
    assert 0 < event["completion_tokens"] <= 10
    assert event["prompt_tokens"] > 0
    assert chunks[-1].usage.completion_tokens == event["completion_tokens"]


@pytest.mark.parametrize("problem", ["unknown", "revoked", "malformed", "expired"])
def test_bad_keys_get_401_invalid_api_key(gateway, customer, problem):
    key = customer.key
    if problem == "unknown":
        key = apikeys.generate_key().plaintext  # well-formed, never issued
    elif problem == "revoked":
        services.apikey_revoke(api_key=customer.tenant.api_keys.get())
    elif problem == "malformed":
        key = key[:-1] + ("0" if key[-1] != "0" else "1")  # a typo: the checksum fails
    else:
        services.apikey_rotate(api_key=customer.tenant.api_keys.get(), grace=timedelta(0))
    customer.key = key

    with pytest.raises(openai.AuthenticationError) as caught:
        customer.client().chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "hi"}]
        )

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert key not in str(caught.value.body)


def test_missing_key_is_401(gateway):
    response = httpx.get(f"{gateway.url}/v1/models")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_suspended_tenant_is_403(customer):
    services.tenant_suspend(tenant=customer.tenant)

    with pytest.raises(openai.PermissionDeniedError) as caught:
        customer.client().models.list()

    assert caught.value.code == "tenant_suspended"


def test_unknown_and_forbidden_models_get_the_same_404(gateway, catalog):
    customer = make_customer(gateway, model_allow_list=["smol"])

    errors = []
    for model in ("e5", "no-such-model"):
        with pytest.raises(openai.NotFoundError) as caught:
            customer.client().chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
        errors.append(caught.value)

    assert {e.code for e in errors} == {"model_not_found"}
    assert [e.message.replace("e5", "X").replace("no-such-model", "X") for e in errors] == [
        errors[0].message.replace("e5", "X")
    ] * 2
