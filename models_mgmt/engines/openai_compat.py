"""The `openai` engine: any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, TGI,
SGLang) at a base URL, through one pooled async HTTP client per process."""

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator

import httpx
from django.conf import settings

from models_mgmt.engines.errors import EngineError, EngineRejected, EngineTimeout
from saas_platform import metrics

logger = logging.getLogger(__name__)

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = (
    weakref.WeakKeyDictionary()
)
# Which tokenize endpoint each server answers (None: it has none), learnt on first use.
_tokenize_paths: dict[str, str | None] = {}
_TOKENIZE_CANDIDATES = ("/extras/tokenize/count", "/tokenize")  # llama.cpp's, vLLM's


def http_client() -> httpx.AsyncClient:
    """The process's pooled client (one per event loop: a client belongs to its loop)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.UPSTREAM_CONNECT_TIMEOUT,
                read=settings.UPSTREAM_READ_TIMEOUT,
                write=settings.UPSTREAM_READ_TIMEOUT,
                pool=settings.UPSTREAM_CONNECT_TIMEOUT,
            ),
            limits=httpx.Limits(
                max_connections=settings.UPSTREAM_MAX_CONNECTIONS,
                max_keepalive_connections=min(settings.UPSTREAM_MAX_CONNECTIONS, 256),
            ),
        )
        _clients[loop] = client
    return client


def _error_message(response: httpx.Response, body: bytes) -> str:
    try:
        payload = json.loads(body)
        error = payload.get("error", payload)
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = body[:300].decode(errors="replace")
    return f"The model engine answered {response.status_code}: {message}"


def _raise_for_status(response: httpx.Response, body: bytes) -> None:
    if response.status_code < 400:
        return
    message = _error_message(response, body)
    if response.status_code in (400, 404, 413, 422):
        raise EngineRejected(message)
    metrics.UPSTREAM_ERRORS.labels(kind=f"http_{response.status_code}").inc()
    raise EngineError(message)


def _transport_error(error: Exception) -> EngineError:
    if isinstance(error, httpx.TimeoutException):
        metrics.UPSTREAM_ERRORS.labels(kind="timeout").inc()
        return EngineTimeout("The model engine did not answer in time.")
    metrics.UPSTREAM_ERRORS.labels(kind="transport").inc()
    return EngineError(f"Could not reach the model engine: {type(error).__name__}.")


class OpenAICompatibleEngine:
    def __init__(self, *, base_url: str):
        self.base_url = base_url.rstrip("/")

    async def request(self, endpoint: str, body: dict) -> dict:
        try:
            async with asyncio.timeout(settings.UPSTREAM_TOTAL_TIMEOUT):
                response = await http_client().post(self.base_url + PATHS[endpoint], json=body)
        except (httpx.HTTPError, TimeoutError) as error:
            if isinstance(error, TimeoutError):
                error = httpx.TimeoutException("total timeout")
            raise _transport_error(error) from None
        _raise_for_status(response, response.content)
        try:
            return response.json()
        except ValueError:
            raise EngineError("The model engine's answer was not JSON.") from None

    async def open_stream(self, endpoint: str, body: dict) -> AsyncIterator[dict]:
        client = http_client()
        request = client.build_request("POST", self.base_url + PATHS[endpoint], json=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise _transport_error(error) from None
        if response.status_code >= 400:
            try:
                body_bytes = await response.aread()
            finally:
                await response.aclose()
            _raise_for_status(response, body_bytes)
        return self._chunks(response)

    async def _chunks(self, response: httpx.Response) -> AsyncIterator[dict]:
        deadline = time.monotonic() + settings.UPSTREAM_TOTAL_TIMEOUT
        try:
            async for line in response.aiter_lines():
                if time.monotonic() > deadline:
                    raise _transport_error(httpx.TimeoutException("total timeout"))
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise EngineError("The model engine sent a malformed stream chunk.") from None
                if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    raise EngineError(f"The model engine failed mid-stream: {message}")
                yield chunk
            # The stream ended without [DONE]: the engine closed the connection early.
            raise EngineError("The model engine closed the stream before it was complete.")
        except httpx.HTTPError as error:
            raise _transport_error(error) from None
        finally:
            await response.aclose()

    async def count_tokens(self, text: str) -> int | None:
        """The engine's own tokenizer count, through its tokenize endpoint if it has one."""
        root = self.base_url.removesuffix("/v1")
        known = _tokenize_paths.get(root, "unknown")
        if known is None:
            return None
        candidates = _TOKENIZE_CANDIDATES if known == "unknown" else (known,)
        unreachable = False
        for path in candidates:
            try:
                response = await http_client().post(
                    root + path, json={"input": text, "prompt": text}, timeout=5
                )
                count = response.json().get("count") if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                unreachable, count = True, None
            if isinstance(count, int):
                _tokenize_paths[root] = path
                return count
        if not unreachable:  # every candidate answered, none is a tokenizer: stop asking
            _tokenize_paths[root] = None
        return None

    async def count_prompt_tokens(self, endpoint: str, body: dict) -> int | None:
        """The prompt's text through the engine's tokenizer (without the chat template, which
        the gateway cannot see: a slight undercount of a few tokens a message)."""
        return None
