"""What passes between the client and the engine: the forwarded body, the metered response,
and the server-sent-event stream relayed chunk by chunk as the engine produces it."""

import time
from collections.abc import AsyncIterator

import orjson
from django.conf import settings

from gateway.metering import UsageMeter
from gateway.parsing import FORWARDED_FIELDS, Endpoint, InferenceRequest
from models_mgmt.models import ServedModel

DONE = b"data: [DONE]\n\n"


def forwarded_body(request: InferenceRequest, model: ServedModel, *, bounded: bool) -> dict:
    """What the engine gets: OpenAI's fields and the model's allowed extra ones, nothing else.
    `bounded`: the request's cost is held against a budget or credits, so a request without
    max_tokens gets the default one, and its hold is a true maximum."""
    allowed = FORWARDED_FIELDS[request.endpoint]
    extra = model.extra_fields
    body = {name: value for name, value in request.body.items() if name in allowed or name in extra}
    body["model"] = model.engine_model_name
    if bounded and request.max_tokens is None and request.endpoint != Endpoint.EMBEDDINGS:
        body["max_tokens"] = settings.DEFAULT_MAX_TOKENS_RESERVATION
    if request.stream:
        # Always ask for usage, so that streams are metered; the client only gets the usage
        # chunk if it asked for it.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


def _event(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _choice_text(choice: dict) -> str:
    delta = choice.get("delta") or choice.get("message") or {}
    return (delta.get("content") if isinstance(delta, dict) else None) or choice.get("text") or ""


class StreamTally:
    """What a stream carried, for counting its tokens when the engine reports none."""

    def __init__(self, request: InferenceRequest, engine):
        self.request = request
        self.engine = engine
        self.texts: list[str] = []
        self.content_chunks = 0
        self.reported: dict | None = None
        self.last: dict = {}  # the last chunk, whose id and time the usage chunk repeats
        self.counted = False

    def add(self, chunk: dict) -> None:
        for choice in chunk.get("choices") or []:
            text = _choice_text(choice)
            if text:
                self.texts.append(text)
                self.content_chunks += 1

    async def settle(self, meter: UsageMeter) -> None:
        """Put the real token counts on the meter (once): the engine's own report if it sent
        one, else the gateway's count (the model's tokenizer, the engine's tokenize endpoint,
        or the number of content chunks, in that order)."""
        if self.counted:
            return
        self.counted = True
        await settle_usage(meter, self.request, self.engine, self.reported, "".join(self.texts))
        if self.texts and meter.completion_tokens == 0:
            meter.completion_tokens = self.content_chunks  # never bill zero for produced text


async def settle_usage(meter, request, engine, reported: dict | None, completion_text: str):
    if isinstance(reported, dict) and isinstance(reported.get("prompt_tokens"), int):
        meter.prompt_tokens = reported["prompt_tokens"]
        meter.completion_tokens = int(reported.get("completion_tokens") or 0)
        meter.cached_tokens = _cached_tokens(reported, meter.prompt_tokens)
        meter.usage_source = "reported"
        return
    meter.usage_source = "counted"
    prompt = await engine.count_prompt_tokens(request.endpoint, request.body)
    if prompt is None:
        prompt = await engine.count_tokens(request.prompt_text)
    meter.prompt_tokens = prompt if prompt is not None else request.estimated_prompt_tokens()
    if completion_text:
        completion = await engine.count_tokens(completion_text)
        meter.completion_tokens = completion or max(1, len(completion_text.split()))


def _cached_tokens(reported: dict, prompt_tokens: int) -> int:
    """The prompt-cache hits an engine reports (`usage.prompt_tokens_details.cached_tokens`,
    as vLLM and OpenAI do): a whole number from 0 to the prompt tokens, else none."""
    details = reported.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if isinstance(cached, bool) or not isinstance(cached, int):
        return 0
    return min(max(cached, 0), prompt_tokens)


async def metered_response(
    result: dict, request: InferenceRequest, model: ServedModel, meter: UsageMeter, engine
) -> dict:
    completion_text = "".join(_choice_text(choice) for choice in result.get("choices") or [])
    await settle_usage(meter, request, engine, result.get("usage"), completion_text)
    result["model"] = model.model_id
    if not isinstance(result.get("usage"), dict):
        result["usage"] = _usage_payload(meter)
    return result


def _usage_payload(meter: UsageMeter) -> dict:
    usage = {
        "prompt_tokens": meter.prompt_tokens,
        "completion_tokens": meter.completion_tokens,
        "total_tokens": meter.total_tokens,
    }
    if meter.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": meter.cached_tokens}
    return usage


async def relay_chunks(
    chunks: AsyncIterator[dict], request: InferenceRequest, model: ServedModel, tally: StreamTally
) -> AsyncIterator[bytes]:
    """The engine's chunks as server-sent events for the client, counted on `tally`. The usage
    chunk is held back: it is sent, once the counts are final, by `usage_event`."""
    async for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            tally.reported = usage
        tally.add(chunk)
        tally.last = chunk
        if not chunk.get("choices") and usage is not None:
            continue
        if not request.include_usage:
            chunk.pop("usage", None)
        chunk["model"] = model.model_id
        yield _event(chunk)


def usage_event(
    request: InferenceRequest, model: ServedModel, meter: UsageMeter, tally: StreamTally
) -> bytes:
    """The final usage chunk a client that asked for `include_usage` gets."""
    last = tally.last
    return _event(
        {
            "id": last.get("id", meter.request_id),
            "object": "chat.completion.chunk"
            if request.endpoint == Endpoint.CHAT
            else "text_completion",
            "created": last.get("created", int(time.time())),
            "model": model.model_id,
            "choices": [],
            "usage": _usage_payload(meter),
        }
    )


def error_event(error) -> bytes:
    """An engine failure after the headers were sent: an error event the client can read."""
    return _event(error.as_dict())
