"""A fake OpenAI-compatible engine for gateway tests (and benchmarks): fast, scriptable, real
HTTP. Its behaviour comes from the model name the gateway forwards, as a query string:

    fake?chunks=20&delay=0.05   stream 20 content chunks, 50 ms apart (also the reply's words)
    fake?usage=0                 never report usage, even when asked (as llama.cpp's server)
    fake?fail=500                answer with that HTTP status
    fake?hang=1                  accept the request and never answer
    fake?cut=3                   close the connection after 3 chunks, without [DONE]
    fake?stall=3                 stream 3 chunks, then send nothing more (a mid-stream hang)
    fake?cached=4                report 4 of the prompt tokens as served from its prompt cache
                                 (usage.prompt_tokens_details.cached_tokens, as vLLM and OpenAI)
 caps the chunks, as it caps a real engine's output.
    fake?capacity=4              serve at most 4 requests for this model name at once; more
                                 wait inside, in arrival order, before any byte (saturated)

A request's max_tokens caps the chunks, as it caps a real engine's output.

It stops streaming when its client (the gateway) goes away. With FAKE_UPSTREAM_LOG set, it
appends one JSON line per request to that file once the request has ended: the request's
`user` field, what it sent (`completion_tokens`: content chunks) and whether it reported
usage, so a test can compare what the engine reported with what was billed.

Run: python -m tests.fakes.upstream PORT
"""

import asyncio
import contextlib
import json
import os
import sys
import time
from urllib.parse import parse_qs

import uvicorn

PROMPT_TOKENS = 10


def _options(model: str) -> dict[str, float]:
    _, _, query = model.partition("?")
    return {key: float(values[0]) for key, values in parse_qs(query).items()}


async def _read_json(receive) -> dict:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return json.loads(body or b"{}")


async def _send_json(send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _chunk(model: str, chat: bool, text: str | None, finish: str | None = None) -> dict:
    choice = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": text} if text is not None else {}
    else:
        choice["text"] = text or ""
    return {
        "id": "fake-1",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def _log(record: dict) -> None:
    path = os.environ.get("FAKE_UPSTREAM_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        finally:
            os.close(fd)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if scope["method"] == "GET" and path == "/v1/models":
        return await _send_json(send, 200, {"object": "list", "data": [{"id": "fake"}]})
    if path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        return await _send_json(send, 404, {"error": {"message": "no such route"}})
    body = await _read_json(receive)
    record = {"user": body.get("user"), "model": body.get("model"), "path": path,
              "stream": bool(body.get("stream")), "prompt_tokens": 0, "completion_tokens": 0,
              "usage_reported": False, "outcome": "ok"}  # fmt: skip
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        await _answer(path, body, send, gone, record)
    finally:
        watcher.cancel()
        _log(record)


# One semaphore per model name (its whole query string), and how many requests each serves now.
_capacity: dict[str, asyncio.Semaphore] = {}
_serving: dict[str, int] = {}


async def _answer(path: str, body: dict, send, gone: asyncio.Event, record: dict) -> None:
    model = str(body.get("model", "fake"))
    capacity = int(_options(model).get("capacity", 0))
    if not capacity:
        return await _serve(path, body, send, gone, record)
    semaphore = _capacity.setdefault(model, asyncio.Semaphore(capacity))
    async with semaphore:
        _serving[model] = _serving.get(model, 0) + 1
        # When it started and how many it served then, for tests of what waits where.
        record.update(started=time.time(), serving=_serving[model])
        try:
            return await _serve(path, body, send, gone, record)
        finally:
            _serving[model] -= 1


async def _serve(path: str, body: dict, send, gone: asyncio.Event, record: dict) -> None:
    model = body.get("model", "fake")
    options = _options(model)
    chunks, delay = int(options.get("chunks", 5)), options.get("delay", 0.0)
    if isinstance(body.get("max_tokens"), int):  # as engines do: never more than max_tokens
        chunks = min(chunks, body["max_tokens"])
    report_usage = options.get("usage", 1) == 1
    if "fail" in options:
        status = int(options["fail"])
        record["outcome"] = f"fail_{status}"
        return await _send_json(send, status, {"error": {"message": f"fake failure {status}"}})
    if options.get("hang"):
        record["outcome"] = "hang"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), 3600)
        return
    if path == "/v1/embeddings":
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1] * 8} for i in range(len(inputs))
        ]
        usage = {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}
        record.update(prompt_tokens=PROMPT_TOKENS, usage_reported=True)
        return await _send_json(
            send, 200, {"object": "list", "data": data, "model": model, "usage": usage}
        )
    chat = path == "/v1/chat/completions"
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": chunks,
        "total_tokens": PROMPT_TOKENS + chunks,
    }
    if "cached" in options:
        usage["prompt_tokens_details"] = {"cached_tokens": int(options["cached"])}
    if not body.get("stream"):
        await asyncio.sleep(delay * chunks)
        text = " ".join(f"w{i}" for i in range(chunks))
        choice = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        payload = {"id": "fake-1", "object": "chat.completion" if chat else "text_completion",
                   "created": int(time.time()), "model": model, "choices": [choice]}  # fmt: skip
        if report_usage:
            payload["usage"] = usage
        record.update(prompt_tokens=PROMPT_TOKENS, completion_tokens=chunks,
                      usage_reported=report_usage)  # fmt: skip
        return await _send_json(send, 200, payload)

    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip

    async def event(payload) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await send(
            {"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True}
        )

    cut, stall = int(options.get("cut", -1)), int(options.get("stall", -1))
    for index in range(chunks):
        if gone.is_set():
            record["outcome"] = "disconnected"
            return
        if index == cut:
            record["outcome"] = "cut"
            raise ConnectionAbortedError("fake engine cut the stream")  # uvicorn drops the socket
        if index == stall:
            record["outcome"] = "stall"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), 3600)
            return
        await event(_chunk(model, chat, f"w{index} "))
        record["completion_tokens"] = index + 1
        if delay:
            await asyncio.sleep(delay)
    if gone.is_set():
        record["outcome"] = "disconnected"
        return
    await event(_chunk(model, chat, None, finish="stop"))
    if report_usage and (body.get("stream_options") or {}).get("include_usage"):
        await event({"id": "fake-1", "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model, "choices": [], "usage": usage})  # fmt: skip
        record.update(prompt_tokens=PROMPT_TOKENS, usage_reported=True)
    await event(b"[DONE]")
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="on",
                timeout_graceful_shutdown=1)  # fmt: skip
