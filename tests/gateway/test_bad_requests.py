"""Bad bodies get 4xx in OpenAI's error shape, never a 500, and reserve or record nothing."""

import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.parsing import Endpoint, InvalidRequest, RequestTooLarge, parse

HI = [{"role": "user", "content": "hi"}]

BAD_BODIES = [
    ("not json", b"{oops", 400, None),
    ("a JSON array", b"[1, 2]", 400, None),
    ("no model", json.dumps({"messages": HI}).encode(), 400, "model"),
    ("model not a string", json.dumps({"model": 7, "messages": HI}).encode(), 400, "model"),
    ("messages not a list", json.dumps({"model": "fake", "messages": "hi"}).encode(), 400,
     "messages"),
    ("empty messages", json.dumps({"model": "fake", "messages": []}).encode(), 400, "messages"),
    ("message without role", json.dumps({"model": "fake", "messages": [{"content": "x"}]}).encode(),
     400, "messages[0].role"),
    ("max_tokens a string", json.dumps({"model": "fake", "messages": HI, "max_tokens": "10"})
     .encode(), 400, "max_tokens"),
    ("max_tokens a boolean", json.dumps({"model": "fake", "messages": HI, "max_tokens": True})
     .encode(), 400, "max_tokens"),
    ("max_tokens zero", json.dumps({"model": "fake", "messages": HI, "max_tokens": 0}).encode(),
     400, "max_tokens"),
    ("huge max_tokens", json.dumps({"model": "fake", "messages": HI, "max_tokens": 10**12})
     .encode(), 400, "max_tokens"),
    ("stream not a boolean", json.dumps({"model": "fake", "messages": HI, "stream": "yes"})
     .encode(), 400, "stream"),
    ("stream_options without stream",
     json.dumps({"model": "fake", "messages": HI, "stream_options": {"include_usage": True}})
     .encode(), 400, "stream_options"),
    ("n too large", json.dumps({"model": "fake", "messages": HI, "n": 1000}).encode(), 400, "n"),
    ("10 MB body", json.dumps({"model": "fake", "messages": [{"role": "user",
     "content": "x" * 10_000_000}]}).encode(), 413, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "body", "status", "param"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_bad_bodies_get_openai_shaped_4xx_and_no_event(
    customer, gateway, name, body, status, param
):
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body, timeout=30,
                          headers={"Authorization": f"Bearer {customer.key}",
                                   "Content-Type": "application/json"})  # fmt: skip

    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["message"]
    assert error["param"] == param
    assert gateway.events_for([response.headers["x-request-id"]], expected=[], timeout=0) == []


def test_wrong_method_and_unknown_endpoint_are_json_errors(customer, gateway):
    headers = {"Authorization": f"Bearer {customer.key}"}

    wrong_method = httpx.get(f"{gateway.url}/v1/chat/completions", headers=headers)
    unknown = httpx.post(f"{gateway.url}/v1/fine_tuning/jobs", headers=headers, json={})

    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"


def test_embeddings_cannot_stream_and_chat_models_do_not_embed(customer, gateway):
    headers = {"Authorization": f"Bearer {customer.key}"}

    streamed = httpx.post(f"{gateway.url}/v1/embeddings", headers=headers,
                          json={"model": "e5", "input": "x", "stream": True})  # fmt: skip
    wrong_task = httpx.post(f"{gateway.url}/v1/embeddings", headers=headers,
                            json={"model": "smol", "input": "x"})  # fmt: skip

    assert streamed.status_code == 400
    assert streamed.json()["error"]["param"] == "stream"
    assert wrong_task.status_code == 400
    assert wrong_task.json()["error"]["param"] == "model"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values | st.just("m"),
        "messages": json_values | st.just(HI),
        "prompt": json_values,
        "input": json_values,
        "max_tokens": json_values,
        "n": json_values,
        "stream": json_values,
        "stream_options": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(endpoint=st.sampled_from(list(Endpoint)), body=request_like | json_values)
def test_parsing_any_json_either_accepts_or_raises_a_client_error(endpoint, body):
    request, refusal = None, None
    try:
        request = parse(endpoint, json.dumps(body).encode())
    except (InvalidRequest, RequestTooLarge) as error:
        refusal = error

    if refusal is not None:
        assert 400 <= refusal.status < 500
        assert refusal.message
    else:
        assert request.reservation() >= 1
        assert isinstance(request.model, str)
        assert request.model.strip()
