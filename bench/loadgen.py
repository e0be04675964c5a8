"""An async load generator, run in its own process: N non-streaming chat requests at a given
concurrency against a base URL; prints requests per second and latency percentiles as JSON.

    python -m bench.loadgen URL KEY MODEL CONCURRENCY REQUESTS
"""

import asyncio
import json
import statistics
import sys
import time

import httpx


async def main(url: str, key: str, model: str, concurrency: int, total: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    failures = 0
    remaining = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits)
    async with client:

        async def worker():
            nonlocal failures
            for _ in remaining:
                started = time.perf_counter()
                try:
                    response = await client.post("/chat/completions", json=body)
                except httpx.HTTPError:  # counted, not fatal: the table reports failures
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - started)
                failures += response.status_code != 200

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
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "failures": failures,
        "requests": len(latencies),
    }


if __name__ == "__main__":
    url, key, model, concurrency, total = sys.argv[1:6]
    print(json.dumps(asyncio.run(main(url, key, model, int(concurrency), int(total)))))
