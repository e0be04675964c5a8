"""`make bench`: the gateway's cost, measured against baselines from the same run.

Prints one markdown table and writes it to docs/benchmarks.md with the date, CPU and versions.
Both cores are shared: the gateway is pinned to CPU 0, the fake engine and the load generator
to CPU 1 (taskset), for the direct and the gateway runs alike.
"""

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/saas_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
ENV = dict(os.environ, DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL,
           SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only-secret"),
           LOG_LEVEL="WARNING", APIKEY_CACHE_SECONDS="60", CATALOG_CACHE_SECONDS="60")  # fmt: skip
LOADS = [(1, 400), (64, 4000), (256, 4000)]  # (concurrency, requests)


def _create_database() -> None:
    import psycopg

    name = DATABASE_URL.rsplit("/", 1)[1]
    with psycopg.connect(DATABASE_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _setup(upstream: str) -> str:
    """Migrate, then a tenant with room for every load, its key and the fake model."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=ENV,
                   check=True)  # fmt: skip
    os.environ.update(ENV)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas_platform.settings")
    import django

    django.setup()
    from models_mgmt.services import model_register
    from tenants import services

    model_register(model_id="fake", engine="openai", base_url=upstream, upstream_model="fake")
    tenant = services.tenant_register(slug=f"bench-{uuid.uuid4().hex[:8]}",
                                      max_concurrent_requests=10_000,
                                      max_tokens_per_minute=10**12)  # fmt: skip
    return services.apikey_issue(tenant=tenant, name="bench").plaintext


def _start(command: list[str], cpu: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(["taskset", "-c", cpu, *command], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    import httpx

    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz" if "uvicorn" in command[0]
                      else f"http://127.0.0.1:{port}/v1/models", timeout=1)  # fmt: skip
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{command[0]} did not start")


def _load(url: str, key: str, concurrency: int, total: int) -> dict:
    out = subprocess.run(["taskset", "-c", "1", sys.executable, "-m", "bench.loadgen", url, key,
                          "fake", str(concurrency), str(total)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)


def _admission_rate(seconds: float = 3.0) -> tuple[float, float]:
    """Admit+release pairs per second against Redis, and plain PINGs per second (baseline)."""
    import redis.asyncio as aioredis

    from tenants.admission import Limits, RedisAdmission

    async def run():
        backend = RedisAdmission(REDIS_URL)
        limits = Limits(max_concurrent=10**6, tokens_per_minute=10**15)
        pairs, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            lease = uuid.uuid4().hex
            await backend.admit(999_999, lease, limits, 10)
            await backend.release(999_999, lease, 10, 10)
            pairs += 1
        client = aioredis.Redis.from_url(REDIS_URL)
        pings, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await client.ping()
            pings += 1
        await client.aclose()
        await backend.client.aclose()
        return pairs / seconds, pings / seconds

    return asyncio.run(run())


def _manager_rates(seconds: float = 2.0) -> tuple[float, float]:
    from models_mgmt.resource_manager import ResourceManager
    from models_mgmt.shared_resource_manager import SharedResourceManager

    def ops(manager) -> float:
        count, deadline, index = 0, time.perf_counter() + seconds, 0
        while time.perf_counter() < deadline:
            model_id = f"m{index % 12}"
            manager.load(model_id, 10)  # 12 models of 10 in a budget of 100: evictions
            manager.touch(model_id)
            count += 2
            index += 1
        return count / seconds

    shared = SharedResourceManager(100, name=f"bench-{uuid.uuid4().hex}", redis_url=REDIS_URL)
    return ops(ResourceManager(100)), ops(shared)


def _versions() -> str:
    import django
    import uvicorn

    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True, check=False).stdout.split()[2]  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())  # fmt: skip
    return (f"{datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC; {cpu}, {os.cpu_count()} cores; "
            f"Python {platform.python_version()}, Django {django.get_version()}, "
            f"uvicorn {uvicorn.__version__}, Redis {redis_version}")  # fmt: skip


def main() -> None:
    _create_database()
    upstream_port, gateway_port = 18601, 18602
    upstream = _start([sys.executable, "-m", "tests.fakes.upstream", str(upstream_port)], "1",
                      upstream_port)  # fmt: skip
    key = _setup(f"http://127.0.0.1:{upstream_port}/v1")
    server = [str(ROOT / ".venv/bin/uvicorn"), "saas_platform.asgi:application",
              "--port", str(gateway_port), "--workers", "1", "--no-access-log",
              "--lifespan", "off", "--log-level", "warning"]  # fmt: skip
    gateway = _start(server, "0", gateway_port)
    rows = []
    try:
        for concurrency, total in LOADS:
            direct = _load(f"http://127.0.0.1:{upstream_port}/v1", key, concurrency, total)
            through = _load(f"http://127.0.0.1:{gateway_port}/v1", key, concurrency, total)
            rows.append((concurrency, direct, through))
    finally:
        gateway.terminate()
        upstream.terminate()
    admission, pings = _admission_rate()
    in_process, shared = _manager_rates()

    lines = [
        "| measure | baseline | through the gateway / measured | ratio |",
        "|---|---|---|---|",
    ]
    for concurrency, direct, through in rows:
        lines += [
            f"| requests/s at concurrency {concurrency} | {direct['rps']:.0f} direct "
            f"| {through['rps']:.0f} | {through['rps'] / direct['rps']:.2f} |",
            f"| p50 latency at {concurrency} (ms) | {direct['p50_ms']:.2f} direct "
            f"| {through['p50_ms']:.2f} (+{through['p50_ms'] - direct['p50_ms']:.2f}) "
            f"| {through['p50_ms'] / direct['p50_ms']:.1f} |",
            f"| p99 latency at {concurrency} (ms) | {direct['p99_ms']:.2f} direct "
            f"| {through['p99_ms']:.2f} (+{through['p99_ms'] - direct['p99_ms']:.2f}) "
            f"| {through['p99_ms'] / direct['p99_ms']:.1f} |",
        ]
        if through["failures"] or direct["failures"]:
            lines.append(f"| failed requests at {concurrency} | {direct['failures']} "
                         f"| {through['failures']} | |")  # fmt: skip
    lines += [
        f"| admission: admit+release pairs/s (Redis) | {pings:.0f} PINGs/s "
        f"| {admission:.0f} | {admission / pings:.2f} |",
        f"| ResourceManager ops/s (load+touch) | {in_process:.0f} in process "
        f"| {shared:.0f} shared in Redis | {shared / in_process:.3f} |",
    ]
    table = "\n".join(lines)
    header = _versions()
    print(f"\n{header}\n\n{table}\n")
    (ROOT / "docs" / "benchmarks.md").write_text(
        "# Benchmarks\n\n`make bench` writes this file. Every figure sits beside its baseline "
        "from the same run.\n\nGateway: one uvicorn worker pinned to CPU 0; fake engine and "
        "load generator (its own process) pinned to CPU 1; quotas, the ledger recorder and Redis "
        f"on.\n\n{header}\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
