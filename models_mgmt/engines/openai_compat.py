"""The `openai` engine: any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, TGI,
SGLang) at a base URL, through one pooled async HTTP client per process."""

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator

import aiohttp
import orjson
from django.conf import settings

from models_mgmt.engines.errors import EngineError, EngineRejected, EngineTimeout
from saas_platform import metrics

logger = logging.getLogger(__name__)

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
JSON_HEADERS = {"Content-Type": "application/json"}
# How much of an engine's error text reaches a client (a refusal) or the log (a failure).
MAX_PASSED_ON_MESSAGE = 500
MAX_LOGGED_MESSAGE = 2000
# A stream line (one event) may be this long; OpenAI-shaped chunks are far smaller.
MAX_LINE_BYTES = 1024 * 1024

_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession]" = (
    weakref.WeakKeyDictionary()
)
# Which tokenize endpoint each server answers (None: it has none), learnt on first use.
_tokenize_paths: dict[str, str | None] = {}
_TOKENIZE_CANDIDATES = ("/extras/tokenize/count", "/tokenize")  # llama.cpp's, vLLM's


def http_session() -> aiohttp.ClientSession:
    """The process's pooled HTTP client (one per event loop: a session belongs to its loop).
    aiohttp rather than httpx: at 64 concurrent requests httpx's pool spent about 4 ms of CPU a
    request scanning its connections, aiohttp's under 0.3 ms (docs/benchmarks.md)."""
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.UPSTREAM_MAX_CONNECTIONS, limit_per_host=0, ttl_dns_cache=60
            ),
            # `total` bounds a whole exchange, a stream's last byte included.
            timeout=aiohttp.ClientTimeout(
                total=settings.UPSTREAM_TOTAL_TIMEOUT,
                connect=settings.UPSTREAM_CONNECT_TIMEOUT,
                sock_read=settings.UPSTREAM_READ_TIMEOUT,
            ),
            json_serialize=lambda value: orjson.dumps(value).decode(),
            read_bufsize=MAX_LINE_BYTES,
            auto_decompress=True,
        )
        _sessions[loop] = session
    return session


def _error_message(status: int, body: bytes) -> str:
    try:
        payload = orjson.loads(body)
        error = payload.get("error", payload)
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (orjson.JSONDecodeError, AttributeError):
        message = body[:300].decode(errors="replace")
    return f"The model engine answered {status}: {message}"


def _raise_for_status(status: int, body: bytes) -> None:
    """A refusal of the request (4xx) is the client's to fix: its message is passed on. Any
    other failure's body is the engine's business (tracebacks, addresses, credentials): it goes
    to the log, truncated, and the client gets a generic message."""
    if status < 400:
        return
    message = _error_message(status, body)
    if status in (400, 404, 413, 422):
        raise EngineRejected(message[:MAX_PASSED_ON_MESSAGE])
    metrics.UPSTREAM_ERRORS.labels(kind=f"http_{status}").inc()
    logger.warning("%s", message[:MAX_LOGGED_MESSAGE])
    raise EngineError(f"The model engine failed (it answered {status}).")


def _transport_error(error: BaseException) -> EngineError:
    if isinstance(error, TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
        metrics.UPSTREAM_ERRORS.labels(kind="timeout").inc()
        return EngineTimeout("The model engine did not answer in time.")
    metrics.UPSTREAM_ERRORS.labels(kind="transport").inc()
    return EngineError(f"Could not reach the model engine: {type(error).__name__}.")


def _body(body: dict) -> bytes:
    return orjson.dumps(body)


class OpenAICompatibleEngine:
    def __init__(self, *, base_url: str):
        self.base_url = base_url.rstrip("/")

    async def request(self, endpoint: str, body: dict) -> dict:
        url = self.base_url + PATHS[endpoint]
        try:
            async with asyncio.timeout(settings.UPSTREAM_TOTAL_TIMEOUT):
                async with http_session().post(
                    url, data=_body(body), headers=JSON_HEADERS
                ) as response:
                    status, content = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _transport_error(error) from None
        _raise_for_status(status, content)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            raise EngineError("The model engine's answer was not JSON.") from None

    async def open_stream(self, endpoint: str, body: dict) -> AsyncIterator[dict]:
        url = self.base_url + PATHS[endpoint]
        try:
            response = await http_session().post(url, data=_body(body), headers=JSON_HEADERS)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _transport_error(error) from None
        if response.status >= 400:
            try:
                content = await response.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                raise _transport_error(error) from None
            finally:
                response.release()
            _raise_for_status(response.status, content)
        return self._chunks(response)

    async def _chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[dict]:
        try:
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise EngineError("The model engine sent a malformed stream chunk.") from None
                if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    logger.warning("engine failed mid-stream: %s", message[:MAX_LOGGED_MESSAGE])
                    raise EngineError("The model engine failed mid-stream.")
                yield chunk
            # The stream ended without [DONE]: the engine closed the connection early.
            raise EngineError("The model engine closed the stream before it was complete.")
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            # ValueError: a line longer than MAX_LINE_BYTES.
            raise _transport_error(error) from None
        finally:
            response.release()  # back to the pool if read to its end, else closed

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
                async with http_session().post(
                    root + path, data=_body({"input": text, "prompt": text}),
                    headers=JSON_HEADERS, timeout=aiohttp.ClientTimeout(total=5),
                ) as response:  # fmt: skip
                    payload = (
                        orjson.loads(await response.read()) if response.status == 200 else None
                    )
                count = payload.get("count") if isinstance(payload, dict) else None
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
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
