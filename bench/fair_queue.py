"""The fair queue under a noisy neighbour: a quiet tenant's start delay (time to its first
streamed chunk) on a model at capacity, alone and beside a noisy tenant, in the same run.

The engine is the fake with a hard capacity of 4 (a semaphore: more requests would wait inside
it, in arrival order) and 500 ms a request; the model's max_concurrent_per_replica is 4, so the
gateway's fair queue decides who goes next. The quiet tenant keeps 2 streams going; the noisy
one 40. Without the queue the quiet tenant's requests would wait behind the noisy one's
(about 40 / 4 x 500 ms = 5 s); with it, about one request's time.
"""

import asyncio
import statistics
import time
import uuid

import httpx

CAPACITY = 4
MODEL = "fake-fair"
UPSTREAM_MODEL = f"fake?capacity={CAPACITY}&chunks=5&delay=0.1"  # 500 ms a request
QUIET_STREAMS, NOISY_STREAMS = 2, 40


def setup(upstream_url: str) -> tuple[str, str]:
    """The model with its capacity, and a key each for the quiet and the noisy tenant."""
    from models_mgmt.services import model_register
    from tenants import services

    model_register(model_id=MODEL, engine="openai", base_url=upstream_url,
                   upstream_model=UPSTREAM_MODEL, max_concurrent_per_replica=CAPACITY)  # fmt: skip
    keys = []
    for name in ("quiet", "noisy"):
        tenant = services.tenant_register(slug=f"bench-{name}-{uuid.uuid4().hex[:6]}",
                                          max_concurrent_requests=100,
                                          max_tokens_per_minute=10**12)  # fmt: skip
        keys.append(services.apikey_issue(tenant=tenant, name="bench").plaintext)
    return keys[0], keys[1]


async def _stream(client: httpx.AsyncClient, url: str, key: str) -> float:
    """One stream read to its end; the seconds to its first chunk."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    started = time.monotonic()
    first = None
    async with client.stream("POST", f"{url}/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as response:  # fmt: skip
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.monotonic() - started
    return first if first is not None else time.monotonic() - started


errors: list[str] = []  # requests that failed (none in a good run): printed with the rows


async def _loops(url: str, quiet: str, noisy: str | None, seconds: float) -> list[float]:
    """The quiet tenant's start delays while both tenants' streams loop for `seconds`."""
    delays: list[float] = []
    limits = httpx.Limits(max_connections=QUIET_STREAMS + NOISY_STREAMS + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        deadline = time.monotonic() + seconds

        async def loop(key: str, record: bool) -> None:
            while time.monotonic() < deadline:
                try:
                    delay = await _stream(client, url, key)
                except (httpx.HTTPError, RuntimeError) as error:
                    errors.append(f"{type(error).__name__}: {error}"[:200])
                    await asyncio.sleep(0.1)
                    continue
                if record:
                    delays.append(delay)

        noisy_loops = [loop(noisy, False) for _ in range(NOISY_STREAMS)] if noisy else []
        if noisy_loops:  # the noisy tenant first, so its streams already wait
            tasks = [asyncio.ensure_future(task) for task in noisy_loops]
            await asyncio.sleep(1.0)
        else:
            tasks = []
        await asyncio.gather(*(loop(quiet, True) for _ in range(QUIET_STREAMS)))
        await asyncio.gather(*tasks)
    return delays


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(url: str, quiet: str, noisy: str, seconds: float = 12.0) -> dict:
    """The quiet tenant's p50/p99 start delay in ms, alone and beside the noisy one."""
    alone = asyncio.run(_loops(url, quiet, None, seconds))
    beside = asyncio.run(_loops(url, quiet, noisy, seconds))
    return {
        "alone": {"p50": statistics.median(alone) * 1000, "p99": _percentile(alone, 0.99) * 1000,
                  "n": len(alone)},
        "beside": {"p50": statistics.median(beside) * 1000,
                   "p99": _percentile(beside, 0.99) * 1000, "n": len(beside)},
    }  # fmt: skip


def rows(result: dict) -> list[str]:
    alone, beside = result["alone"], result["beside"]
    label = f"fair queue: quiet tenant's start delay beside {NOISY_STREAMS} noisy streams"
    return [
        f"| {label}, p50 ms | {alone['p50']:.1f} alone | {beside['p50']:.1f} "
        f"| {beside['p50'] / alone['p50']:.2f} |",
        f"| {label}, p99 ms | {alone['p99']:.1f} alone | {beside['p99']:.1f} "
        f"| {beside['p99'] / alone['p99']:.2f} |",
    ]
