"""Properties of request parsing, quota arithmetic (admission reservations and refunds, on both
backends) and money rounding, over inputs Hypothesis chooses."""

import asyncio
import itertools
import json
import math
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.money import (
    LEDGER_PLACES,
    MINOR_UNITS,
    from_picos,
    round_line,
    to_picos,
    usage_amount,
)
from gateway.admission import Limits, LocalAdmission, RedisAdmission, Subject
from gateway.parsing import Endpoint, InvalidRequest, RequestTooLarge, parse

FAST = settings(max_examples=150, deadline=None, database=None)
text = st.text(max_size=40)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                           "content": text}),
    min_size=1, max_size=5,
)  # fmt: skip
optional_int = st.none() | st.integers(min_value=1, max_value=131072)


@FAST
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_accepted_or_refused_as_a_client_error(raw):
    for endpoint in Endpoint:
        refusal = None
        try:
            parse(endpoint, raw)
        except (InvalidRequest, RequestTooLarge) as error:  # anything else fails the test
            refusal = error
        if refusal is not None:
            assert 400 <= refusal.status < 500
            assert refusal.message


@FAST
@given(depth=st.integers(min_value=1, max_value=200_000), bracket=st.sampled_from("[{"))
def test_any_nesting_depth_is_a_client_error_not_a_crash(depth, bracket):
    closing = {"[": "]", "{": "}"}[bracket]
    inner = (bracket + ('"a":' if bracket == "{" else "")) * depth + "1" + closing * depth
    raw = ('{"model": "m", "messages": ' + inner + "}").encode()

    with pytest.raises(InvalidRequest):
        parse(Endpoint.CHAT, raw)


@FAST
@given(messages=messages, max_tokens=optional_int, n=st.integers(min_value=1, max_value=16),
       stream=st.booleans(), include_usage=st.booleans())  # fmt: skip
def test_a_valid_chat_body_reserves_its_estimate_plus_its_most_output(
    messages, max_tokens, n, stream, include_usage
):
    body = {"model": "m", "messages": messages, "max_tokens": max_tokens, "n": n,
            "stream": stream}  # fmt: skip
    if stream:
        body["stream_options"] = {"include_usage": include_usage}

    request = parse(Endpoint.CHAT, json.dumps(body).encode())

    prompt = "\n".join(m["content"] for m in messages)
    estimate = math.ceil(len(prompt.encode()) / 3) + 4 * len(messages)
    most = max_tokens or django_settings.DEFAULT_MAX_TOKENS_RESERVATION
    assert request.estimated_prompt_tokens() == estimate
    assert request.reservation() == estimate + most * n
    assert request.include_usage == (stream and include_usage)
    assert request.body == body  # what is forwarded is what was sent


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json_and_are_refused(constant):
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": %s}'
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse(Endpoint.CHAT, raw % constant.encode())


@FAST
@given(value=st.integers() | st.floats(allow_nan=False, allow_infinity=False)
       | st.text(max_size=5) | st.booleans())  # fmt: skip
def test_max_tokens_outside_1_to_the_limit_is_refused_naming_it(value):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": value}
    valid = isinstance(value, int) and not isinstance(value, bool)
    valid = valid and 1 <= value <= django_settings.MAX_TOKENS_LIMIT

    request, refusal = None, None
    try:
        request = parse(Endpoint.CHAT, json.dumps(body).encode())
    except InvalidRequest as error:
        refusal = error

    if valid:
        assert request.max_tokens == value
    else:
        assert refusal.param == "max_tokens"


# --- admission: reservations and refunds --------------------------------------------------


@dataclass
class Step:
    tokens: int  # reserved at admission
    actual: int  # the real count at release


steps = st.lists(
    st.builds(Step, tokens=st.integers(1, 400), actual=st.integers(0, 600)), min_size=1,
    max_size=12,
)  # fmt: skip
_tenant_ids = itertools.count(2_000_000)


async def _run(backend, tenant_id, limits, plan):
    """Admit every step (in order), settle them all; return what the backend reported."""
    admitted, used_after_admits = [], []
    for index, step in enumerate(plan):
        decision = await backend.admit(Subject(tenant_id), f"l{index}", limits, step.tokens)
        if decision.admitted:
            admitted.append((index, step))
        used_after_admits.append(decision.tokens_used)
        assert decision.in_flight <= limits.max_concurrent
    for index, step in admitted:
        await backend.settle(Subject(tenant_id), f"l{index}", step.tokens, step.actual)
    final = await backend.admit(Subject(tenant_id), "probe", limits, 1)
    return admitted, used_after_admits, final


@pytest.mark.parametrize("kind", ["local", "redis"])
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(plan=steps, tpm=st.integers(1, 2000), concurrency=st.integers(1, 6))
def test_admitted_reservations_never_exceed_the_limit_and_refunds_are_exact(
    kind, plan, tpm, concurrency
):
    limits = Limits(max_concurrent=concurrency, tokens_per_minute=tpm)

    async def main():
        backend = RedisAdmission(django_settings.REDIS_URL) if kind == "redis" else LocalAdmission()
        try:
            return await _run(backend, next(_tenant_ids), limits, plan)
        finally:
            if kind == "redis":
                await backend.client.aclose()

    admitted, used_after_admits, final = asyncio.run(main())

    reserved = [step.tokens for _i, step in admitted]
    assert sum(reserved) <= tpm  # the window never holds more than the limit at admission
    assert len(admitted) <= concurrency
    # A refused step never changes the count; an admitted one adds exactly its reservation.
    running = 0
    for index, step in enumerate(plan):
        if any(i == index for i, _s in admitted):
            running += step.tokens
        assert used_after_admits[index] == running
    # Released: each reservation is replaced by its real count (refund or extra charge).
    real = sum(step.actual for _i, step in admitted)
    assert final.tokens_used == real + (1 if final.admitted else 0)
    assert final.in_flight == (1 if final.admitted else 0)


# --- money --------------------------------------------------------------------------------


@dataclass
class Price:
    input_per_million: Decimal
    output_per_million: Decimal


prices = st.builds(
    Price,
    input_per_million=st.decimals(min_value=0, max_value=1000, places=6),
    output_per_million=st.decimals(min_value=0, max_value=1000, places=6),
)
tokens = st.integers(min_value=0, max_value=10**9)
currencies = st.sampled_from(["USD", "EUR", *MINOR_UNITS])


@FAST
@given(prompt=tokens, completion=tokens, price=prices)
def test_a_usage_amount_is_exact_to_twelve_places(prompt, completion, price):
    amount = usage_amount(prompt, completion, price)

    exact = (prompt * price.input_per_million + completion * price.output_per_million) / 10**6
    assert amount == amount.quantize(LEDGER_PLACES)
    assert abs(amount - exact) <= LEDGER_PLACES / 2
    assert amount >= 0


@FAST
@given(amount=st.decimals(min_value=0, max_value=10**9, places=12), currency=currencies)
def test_a_line_rounds_once_half_up_to_the_minor_unit(amount, currency):
    rounded = round_line(amount, currency)

    unit = Decimal(1).scaleb(-MINOR_UNITS.get(currency, 2))
    assert rounded == rounded.quantize(unit)
    assert abs(rounded - amount) <= unit / 2
    if abs(rounded - amount) == unit / 2:  # a tie goes up
        assert rounded > amount
    assert round_line(rounded, currency) == rounded  # rounding twice changes nothing


@FAST
@given(parts=st.lists(st.decimals(min_value=0, max_value=10**6, places=12), max_size=20))
def test_running_spend_in_picos_is_exactly_the_ledgers_sum(parts):
    total = sum(parts, Decimal(0))

    picos = sum(to_picos(p) for p in parts)

    assert picos == to_picos(total)
    assert from_picos(picos) == total
