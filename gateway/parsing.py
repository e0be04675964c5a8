"""Checking an inference request body before anything is reserved or forwarded.

Every problem is a 400 in OpenAI's error shape naming the parameter; nothing here touches the
database, Redis or an engine.
"""

import json
import math
from dataclasses import dataclass
from enum import StrEnum

import orjson
from django.conf import settings

from saas_platform.errors import PlatformError, RequestTooLarge

MAX_N = 16

# OpenAI's request fields that reach the engine (gateway/openapi.yaml lists them). Anything else
# a client sends is dropped unless the model's staff-set `extra_fields` names it: engine-specific
# fields can defeat the token reservation (`ignore_eos` with a large `n_predict`, `min_tokens`),
# or point an engine somewhere (`api_base`). `best_of` is left out for the first reason.
_COMMON = frozenset(
    {
        "model",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "user",
        "n",
        "max_tokens",
    }
)
FORWARDED_FIELDS = {
    "chat": _COMMON
    | {
        "messages",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    },
    "completions": _COMMON | {"prompt", "echo", "logprobs", "suffix"},
    "embeddings": frozenset({"model", "input", "encoding_format", "dimensions", "user"}),
}


class Endpoint(StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


class InvalidRequest(PlatformError):
    status = 400
    code = "invalid_request_error"


# Upper bounds for a cost hold: chat templates add a few tokens a message (about 4 to 6 for the
# common templates); one image is at most a few thousand tokens in the vision models served.
TEMPLATE_TOKENS = 8
IMAGE_TOKENS = 4096


@dataclass(frozen=True)
class InferenceRequest:
    endpoint: Endpoint
    body: dict
    model: str
    stream: bool
    include_usage: bool  # whether the client asked for the final usage chunk
    max_tokens: int | None
    n: int
    prompt_text: str  # the text the prompt is made of, for estimating and counting tokens
    prompt_items: int  # messages, prompts or inputs, each costing some template overhead
    image_urls: tuple[str, ...] = ()  # of image_url message parts, checked against the model

    def estimated_prompt_tokens(self) -> int:
        """An estimate made before the engine has counted: a UTF-8 byte count over 3 (real
        tokenizers average about 4 characters a token in English) plus 4 a message."""
        return math.ceil(len(self.prompt_text.encode()) / 3) + 4 * self.prompt_items

    def most_prompt_tokens(self) -> int:
        """The most prompt tokens the engine can count, for holding a request's largest cost:
        a token is at least one byte of text, plus each message's chat template and each
        image's tokens."""
        return (
            len(self.prompt_text.encode())
            + TEMPLATE_TOKENS * (self.prompt_items + 1)
            + IMAGE_TOKENS * len(self.image_urls)
        )

    def most_completion_tokens(self) -> int:
        """The most it may generate: max_tokens for each choice (the gateway sends the default
        as max_tokens when the client gave none and the cost is limited: relay)."""
        if self.endpoint == Endpoint.EMBEDDINGS:
            return 0
        return (self.max_tokens or settings.DEFAULT_MAX_TOKENS_RESERVATION) * self.n

    def reservation(self) -> int:
        """Tokens reserved at admission: the prompt estimate plus the most it may generate."""
        if self.endpoint == Endpoint.EMBEDDINGS:
            return self.estimated_prompt_tokens()
        completion = self.max_tokens or settings.DEFAULT_MAX_TOKENS_RESERVATION
        return self.estimated_prompt_tokens() + completion * self.n


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _content_text(content, param: str, images: list[str]) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(
                    "Each content part must be an object with a type.", param=param
                )
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise InvalidRequest("A text content part needs a string 'text'.", param=param)
                texts.append(part["text"])
            elif part["type"] == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if not isinstance(url, str):
                    raise InvalidRequest("An image_url part needs a string 'url'.", param=param)
                images.append(url)
        return "\n".join(texts)
    raise InvalidRequest("Message content must be a string or a list of parts.", param=param)


def _chat_prompt(body: dict, images: list[str]) -> tuple[str, int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    texts = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{param} must be an object.", param=param)
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise InvalidRequest(f"{param}.role must be a string.", param=f"{param}.role")
        texts.append(_content_text(message.get("content"), f"{param}.content", images))
    return "\n".join(texts), len(messages)


def _strings_or_tokens(value, param: str) -> tuple[str, int]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(value, str):
        return value, 1
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return "\n".join(value), len(value)
        if all(_is_int(item) for item in value):
            return " ".join("x" for _ in value), 1  # ~one token each
        if all(isinstance(item, list) and item and all(_is_int(t) for t in item) for item in value):
            return " ".join("x" for item in value for _ in item), len(value)
    raise InvalidRequest(
        f"'{param}' must be a string, an array of strings or an array of token ids.", param=param
    )


def _refuse_constant(name: str):
    raise InvalidRequest(f"The request body is not valid JSON: {name} is not a JSON number.")


def _strict_json(raw: bytes):
    """JSON that orjson refused: read again by the standard library, which takes integers of
    any size but, like orjson, no NaN or Infinity (not JSON: an engine would choke on them)."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    except RecursionError:  # thousands of nested brackets: json.loads recurses per level
        raise InvalidRequest("The request body is nested too deeply.") from None


def parse(endpoint: Endpoint, raw: bytes) -> InferenceRequest:
    if len(raw) > settings.INFERENCE_MAX_BODY_BYTES:
        raise RequestTooLarge(
            f"Request body is larger than {settings.INFERENCE_MAX_BODY_BYTES} bytes."
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = _strict_json(raw)  # the slow path, for what orjson cannot read (big integers)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("You must provide a model parameter.", param="model")

    images: list[str] = []
    if endpoint == Endpoint.CHAT:
        prompt_text, items = _chat_prompt(body, images)
    elif endpoint == Endpoint.COMPLETIONS:
        if "prompt" not in body:
            raise InvalidRequest("You must provide a prompt.", param="prompt")
        prompt_text, items = _strings_or_tokens(body["prompt"], "prompt")
    else:
        if "input" not in body:
            raise InvalidRequest("You must provide an input.", param="input")
        prompt_text, items = _strings_or_tokens(body["input"], "input")

    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None:
            value = body[name]
            if not _is_int(value) or value < 1:
                raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
            if value > settings.MAX_TOKENS_LIMIT:
                raise InvalidRequest(
                    f"'{name}' is {value}, above the maximum of {settings.MAX_TOKENS_LIMIT}.",
                    param=name,
                )
            max_tokens = value

    n = body.get("n", 1)
    if n is None:
        n = 1
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise InvalidRequest(f"'n' must be an integer from 1 to {MAX_N}.", param="n")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    if stream and endpoint == Endpoint.EMBEDDINGS:
        raise InvalidRequest("Embeddings cannot be streamed.", param="stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise InvalidRequest(
                "'stream_options.include_usage' must be a boolean.",
                param="stream_options.include_usage",
            )

    return InferenceRequest(
        endpoint=endpoint,
        body=body,
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        n=n,
        prompt_text=prompt_text,
        prompt_items=items,
        image_urls=tuple(images),
    )
