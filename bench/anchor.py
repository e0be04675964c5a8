"""The anchor: the floor a Python gateway can reach on this path, a raw ASGI application (no
framework) doing per POST /v1/chat/completions what the gateway's hot path cannot do without:

1. the bearer key checked (SHA-256, against the one key in ANCHOR_API_KEY);
2. one Redis round trip to admit: the gateway's own ADMIT script (concurrency lease, tokens
   reserved in the per-minute window, the budget key read);
3. the body forwarded to the engine through one pooled aiohttp session per process;
4. one Redis round trip to finish: a non-transactional pipeline of the SETTLE script
   (reservation reconciled to the engine's usage) and an XADD of the usage event, shaped as the
   gateway's, to the stream the ledger worker drains;
5. the engine's JSON returned as it came.

No routing, catalog, per-tenant limits read from a database, metrics or error shapes: what is
left is the cost of Python, uvicorn, one HTTP client and one Redis client.

    ANCHOR_API_KEY=sk-... ANCHOR_UPSTREAM=http://127.0.0.1:18611/v1 REDIS_URL=redis://... \\
        uvicorn bench.anchor:app --workers 2 --no-access-log --lifespan off

ANCHOR_TENANT_ID and ANCHOR_KEY_PREFIX are what the usage events carry (a real tenant, so the
ledger stores them like the gateway's); ANCHOR_STREAM is the stream (default usage:events).
"""

import hashlib
import hmac
import os
import time
import uuid

import aiohttp
import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from gateway.admission_lua import ADMIT, SETTLE

KEY_DIGEST = hashlib.sha256(os.environ["ANCHOR_API_KEY"].encode()).digest()
UPSTREAM = os.environ["ANCHOR_UPSTREAM"].rstrip("/") + "/chat/completions"
REDIS_URL = os.environ["REDIS_URL"]
TENANT = os.environ.get("ANCHOR_TENANT_ID", "0")
KEY_PREFIX = os.environ.get("ANCHOR_KEY_PREFIX", "")
STREAM = os.environ.get("ANCHOR_STREAM", "usage:events")
TAG = f"adm:{{{TENANT}}}"
LEASE_MS, MAX_CONCURRENT, TOKENS_PER_MINUTE, NO_LIMIT = 15_000, 10**6, 10**15, 0
SPEND_TTL_SECONDS = 40 * 24 * 3600
SHAS = {script: hashlib.sha1(script.encode()).hexdigest() for script in (ADMIT, SETTLE)}  # noqa: S324 - Redis names scripts by SHA-1
JSON = [(b"content-type", b"application/json")]
UPSTREAM_HEADERS = {"content-type": "application/json"}


class _Process:
    """What each server process holds: one Redis pool, one HTTP session (made on first use,
    inside the process's event loop)."""

    redis: aioredis.Redis | None = None
    http: aiohttp.ClientSession | None = None

    @classmethod
    def clients(cls) -> tuple[aioredis.Redis, aiohttp.ClientSession]:
        if cls.redis is None:
            cls.redis = aioredis.Redis.from_url(REDIS_URL, max_connections=1024)
            cls.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1024),
                timeout=aiohttp.ClientTimeout(total=60),
            )
        return cls.redis, cls.http


async def _reply(send, status: int, body: bytes) -> None:
    headers = [*JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(message: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": code, "code": code, "param": None}})


async def _admit(client: aioredis.Redis, keys: list[str], lease: str, tokens: int) -> int:
    # No cost held (0), not prepaid; then the tenant's limits, without a budget (-1).
    args = [lease, LEASE_MS, tokens, 0, 0, MAX_CONCURRENT, TOKENS_PER_MINUTE, NO_LIMIT, -1]
    try:
        result = await client.evalsha(SHAS[ADMIT], len(keys), *keys, *args)
    except NoScriptError:  # a Redis that restarted or flushed its scripts
        for script in SHAS:
            await client.script_load(script)
        result = await client.evalsha(SHAS[ADMIT], len(keys), *keys, *args)
    return int(result[0])


async def _finish(client, keys: list[str], lease: str, reserved: int, actual: int, event) -> None:
    pipe = client.pipeline(transaction=False)
    settle = [lease, reserved, actual, 0, 0, SPEND_TTL_SECONDS]  # no cost, not prepaid
    pipe.evalsha(SHAS[SETTLE], len(keys), *keys, *settle)
    pipe.xadd(STREAM, {"event": orjson.dumps(event)})
    released, _added = await pipe.execute(raise_on_error=False)
    if isinstance(released, NoScriptError):
        await client.eval(SETTLE, len(keys), *keys, *settle)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        return await _reply(send, 200, b'{"status":"ok"}')  # readiness
    if scope["path"] != "/v1/chat/completions":
        return await _reply(send, 404, _error("No such route.", "not_found"))
    token = dict(scope["headers"]).get(b"authorization", b"").removeprefix(b"Bearer ")
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if not hmac.compare_digest(hashlib.sha256(token).digest(), KEY_DIGEST):
        return await _reply(send, 401, _error("Invalid API key.", "invalid_api_key"))
    request = orjson.loads(body)
    redis, http = _Process.clients()
    keys = [f"{TAG}:{name}" for name in ("leases", "tok", "amt", "sum", "req", "holds", "held")]
    keys += [f"{TAG}:spend:{time.strftime('%Y-%m', time.gmtime())}", f"{TAG}:credit:granted",
             f"{TAG}:credit:used"]  # fmt: skip
    lease, started = uuid.uuid4().hex, time.time()
    reserved = len(body) // 4 + int(request.get("max_tokens") or 1024)
    if await _admit(redis, keys, lease, reserved) != 1:
        return await _reply(send, 429, _error("Limit reached.", "rate_limit_exceeded"))
    status, payload, usage = 502, _error("The engine failed.", "upstream_error"), {}
    try:
        async with http.post(UPSTREAM, data=body, headers=UPSTREAM_HEADERS) as response:
            status, payload = response.status, await response.read()
        if status == 200:
            usage = orjson.loads(payload).get("usage") or {}
    except (aiohttp.ClientError, TimeoutError):
        status = 502
    finally:
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        event = {"request_id": lease, "tenant_id": TENANT, "api_key_prefix": KEY_PREFIX,
                 "model": str(request.get("model")), "prompt_tokens": prompt,
                 "completion_tokens": completion, "timestamp": int(started),
                 "latency_ms": int((time.time() - started) * 1000), "status": status,
                 "usage_source": "reported", "endpoint": "chat"}  # fmt: skip
        await _finish(redis, keys, lease, reserved, prompt + completion, event)
    await _reply(send, status, payload)
