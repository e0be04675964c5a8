"""A load generator, run in its own process, on raw asyncio sockets (HTTP/1.1, keep-alive): a
general-purpose client library (httpx) costs more CPU per request than a fast server, and the
load generator shares a core with the upstream, so a heavy client would flatter the gateway.

    python -m bench.loadgen chat URL KEY MODEL CONCURRENCY REQUESTS
        N non-streaming chat requests at a concurrency: requests/s and latency percentiles.
    python -m bench.loadgen streams URL KEY MODEL STREAMS
        STREAMS streaming requests held open at once: time to first chunk and whether each
        stream reached [DONE].

Prints one JSON object.
"""

import asyncio
import json
import statistics
import sys
import time
from urllib.parse import urlsplit


class Connection:
    def __init__(self, url: str, key: str):
        parts = urlsplit(url)
        self.host, self.port, self.prefix = parts.hostname, parts.port or 80, parts.path
        self.key = key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {self.prefix}/chat/completions HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )

    async def head(self) -> tuple[int, dict[bytes, bytes]]:
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    async def body(self, headers: dict[bytes, bytes]):
        """The body's pieces as they arrive (content-length or chunked)."""
        if b"content-length" in headers:
            yield await self.reader.readexactly(int(headers[b"content-length"]))
            return
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            piece = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            yield piece[:-2]


async def chat(url: str, key: str, model: str, concurrency: int, total: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    latencies: list[float] = []
    failures = 0
    remaining = iter(range(total))

    async def worker():
        nonlocal failures
        connection = Connection(url, key)
        for _ in remaining:
            started = time.perf_counter()
            try:
                if connection.writer is None:
                    await connection.open()
                connection.send(body)
                status, headers = await connection.head()
                async for _piece in connection.body(headers):
                    pass
            except (OSError, asyncio.IncompleteReadError, ValueError):
                failures += 1  # counted, not fatal: the table reports failures
                connection.close()
                continue
            latencies.append(time.perf_counter() - started)
            failures += status != 200
            if headers.get(b"connection") == b"close":
                connection.close()
        connection.close()

    warm_up = iter(range(min(50, total)))
    remaining = warm_up
    await asyncio.gather(*[worker() for _ in range(min(10, concurrency))])
    latencies.clear()
    failures = 0
    remaining = iter(range(total))
    began = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "failures": failures,
        "requests": len(latencies),
    }


async def streams(url: str, key: str, model: str, count: int) -> dict:
    """`count` streams opened together and held until the engine ends them."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    first: list[float] = []
    completed = 0
    errors: dict[str, int] = {}
    opened = asyncio.Event()
    open_count = 0

    async def one():
        nonlocal completed, open_count
        connection = Connection(url, key)
        try:
            await connection.open()
            started = time.perf_counter()
            connection.send(body)
            status, headers = await connection.head()
            if status != 200:
                raise ValueError(f"status {status}")
            seen = b""
            async for piece in connection.body(headers):
                if not seen:
                    first.append(time.perf_counter() - started)
                    open_count += 1
                    if open_count == count:
                        opened.set()
                seen = (seen + piece)[-64:]
            if b"[DONE]" in seen:
                completed += 1
            else:
                errors["no [DONE]"] = errors.get("no [DONE]", 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            name = type(error).__name__ if not isinstance(error, ValueError) else str(error)
            errors[name] = errors.get(name, 0) + 1
        finally:
            connection.close()

    began = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(count)]
    # Tell the parent (which samples the gateway's memory) when every stream is open.
    waiter = asyncio.create_task(opened.wait())
    done, _ = await asyncio.wait([waiter, asyncio.gather(*tasks)], return_when="FIRST_COMPLETED")
    if waiter in done:
        print("open", flush=True)
    await asyncio.gather(*tasks)
    first.sort()
    return {
        "streams": count,
        "completed": completed,
        "errors": errors,
        "ttft_p50_ms": statistics.median(first) * 1000 if first else None,
        "ttft_p99_ms": first[max(0, int(len(first) * 0.99) - 1)] * 1000 if first else None,
        "seconds": time.perf_counter() - began,
    }


if __name__ == "__main__":
    mode, url, key, model, *numbers = sys.argv[1:]
    if mode == "chat":
        result = asyncio.run(chat(url, key, model, int(numbers[0]), int(numbers[1])))
    else:
        result = asyncio.run(streams(url, key, model, int(numbers[0])))
    print(json.dumps(result), flush=True)
