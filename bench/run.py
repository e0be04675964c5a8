"""`make bench`: the gateway's cost, measured against baselines from the same run.

Prints one markdown table and writes it to docs/benchmarks.md with the date, CPU and versions.
Both cores are shared: the gateway (and LiteLLM's proxy, the peer) is pinned to CPU 0, the fake
engine and the load generator to CPU 1 (taskset), for the direct, gateway and peer runs alike.
Sections: gateway overhead against direct and LiteLLM, streams held open, the fair queue (a
quiet tenant's start delay with and without a noisy neighbour), admission, the ledger
(bench.ledger, in its own database) and models (ResourceManager, a llama.cpp cold start); then
the production shape (bench.production: the gateway as `make serve` runs it, with a ledger
worker, against a 20 ms engine, the anchor bench/anchor.py and LiteLLM with 2 workers).

    python -m bench.run                                   everything (make bench)
    python -m bench.run --only gateway-production         the production shape only, rewriting
                                                          only its part of docs/benchmarks.md
    python -m bench.run --only gateway-production --seconds 5    with 5 s points (default 20)
    python -m bench.run --only admission                  the admission rows only (printed)
    python -m bench.run --only fair-queue                 the fair queue's rows only, printed
    ... --no-write                                        print the tables, leave the file alone
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench import fair_queue

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/saas_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
ENV = dict(os.environ, DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL,
           SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only-secret"),
           LOG_LEVEL="WARNING", APIKEY_CACHE_SECONDS="60", CATALOG_CACHE_SECONDS="60",
           EMAIL_BACKEND=os.environ.get("EMAIL_BACKEND",
                                        "django.core.mail.backends.locmem.EmailBackend"),
           # Streams hold an upstream connection each: the pool must fit the largest N.
           UPSTREAM_MAX_CONNECTIONS="4096")  # fmt: skip
LEDGER_DATABASE_URL = DATABASE_URL.rsplit("/", 1)[0] + "/saas_bench_ledger"
LOADS = [(1, 300), (64, 3000), (256, 3000)]  # (concurrency, requests); the peer gets a third
STREAMS = [200, 2000]
STREAM_MODEL = "fake?chunks=6&delay=1"  # the fake engine's script: 6 chunks a second apart
LEDGER = (50_000, int(os.environ.get("BENCH_LEDGER_ROWS", 10_000_000)), 1000)


def _create_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _django() -> None:
    """Migrate the bench database, then set Django up in this process."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=ENV,
                   check=True)  # fmt: skip
    os.environ.update(ENV)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas_platform.settings")
    import django

    django.setup()


def _setup(upstream: str) -> str:
    """A tenant with room for every load, its key and the fake model."""
    from models_mgmt.services import model_register
    from tenants import services

    model_register(model_id="fake", engine="openai", base_url=upstream, upstream_model="fake")
    model_register(model_id="fake-stream", engine="openai", base_url=upstream,
                   upstream_model=STREAM_MODEL)  # fmt: skip
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
    out = subprocess.run(["taskset", "-c", "1", sys.executable, "-m", "bench.loadgen", "chat",
                          url, key, "fake", str(concurrency), str(total)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _streams(url: str, key: str, model: str, count: int, pid: int | None) -> dict:
    """`count` streams of 6 chunks a second apart, opened together; the gateway's memory
    before, and once every stream is open."""
    before = _rss_mib(pid) if pid else 0.0
    process = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "bench.loadgen",
                                "streams", url, key, model, str(count)],
                               cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)  # fmt: skip
    during = before
    for line in process.stdout:
        if line.strip() == "open":
            during = _rss_mib(pid) if pid else 0.0
        else:
            result = json.loads(line)
    process.wait()
    return dict(result, rss_before_mib=before, rss_open_mib=during)


def _cold_start() -> tuple[float, float] | None:
    """Seconds from asking the process engine for llama.cpp's server (the bundled SmolLM2 GGUF)
    to its first answer, and a warm answer's seconds (the baseline)."""
    import importlib.util
    import tempfile

    import httpx

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from models_mgmt.engines.local import bundled_gguf
    from models_mgmt.engines.process import EngineProcesses

    command = "{python} -m llama_cpp.server --model {path} --host {host} --port {port} --n_ctx 512"
    body = {"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with tempfile.TemporaryDirectory() as state:
        engines = EngineProcesses(Path(state))
        started = time.perf_counter()
        engine = engines.start("smol", command, path=str(bundled_gguf()))
        try:
            httpx.post(f"{engine.base_url}/v1/chat/completions", json=body, timeout=120)
            cold = time.perf_counter() - started
            started = time.perf_counter()
            httpx.post(f"{engine.base_url}/v1/chat/completions", json=body, timeout=120)
            warm = time.perf_counter() - started
        finally:
            engines.stop("smol")
    return cold, warm


def _ledger() -> dict:
    _create_database(LEDGER_DATABASE_URL)
    env = dict(ENV, DATABASE_URL=LEDGER_DATABASE_URL)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env,
                   check=True)  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "bench.ledger", *map(str, LEDGER)], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _admission_rates(seconds: float = 3.0) -> dict[str, float]:
    """Admit+settle pairs per second against Redis: a tenant's limits only (no cost held),
    with its cost held against a budget, and with the key's own limits too; and plain PINGs
    per second (the baseline)."""
    import redis.asyncio as aioredis

    from gateway.admission import Limits, RedisAdmission, Subject

    unlimited = Limits(max_concurrent=10**6, tokens_per_minute=10**15)
    budgeted = Limits(max_concurrent=10**6, tokens_per_minute=10**15, budget_picos=10**24)
    shapes = {
        "tenant limits, no hold": (Subject(999_999), (unlimited,), 0),
        "cost held against a budget": (Subject(999_998), (budgeted,), 10**9),
        "held, and the key's own limits": (Subject(999_997, key_id=1), (budgeted, budgeted),
                                           10**9),
    }  # fmt: skip

    async def run():
        backend = RedisAdmission(REDIS_URL)
        rates = {}
        for name, (subject, limits, hold) in shapes.items():
            pairs, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                lease = uuid.uuid4().hex
                await backend.admit(subject, lease, limits, 10, hold)
                await backend.settle(subject, lease, 10, 10, hold // 2)
                pairs += 1
            rates[name] = pairs / seconds
        client = aioredis.Redis.from_url(REDIS_URL)
        pings, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await client.ping()
            pings += 1
        await client.aclose()
        await backend.client.aclose()
        rates["PINGs"] = pings / seconds
        return rates

    return asyncio.run(run())


def _admission_rows(rates: dict[str, float]) -> list[str]:
    pings = rates.pop("PINGs")
    return [
        f"| admission: admit+settle pairs/s (Redis), {name} | {pings:.0f} PINGs/s "
        f"| {rate:.0f} | {rate / pings:.2f} |"
        for name, rate in rates.items()
    ]


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


def _row(
    label: str,
    base: float,
    value: float,
    unit: str = "",
    *,
    base_name: str = "direct",
    digits: int = 0,
    added: bool = False,
) -> str:
    shown = f"{value:.{digits}f}" + (f" (+{value - base:.{digits}f})" if added else "")
    return f"| {label} | {base:.{digits}f}{unit} {base_name} | {shown} | {value / base:.2f} |"


def _gateway_rows(rows) -> list[str]:
    lines = []
    for concurrency, direct, through, peer in rows:
        for name, measured in (("gateway", through), ("LiteLLM", peer)):
            lines += [
                _row(f"{name}: requests/s at concurrency {concurrency}", direct["rps"],
                     measured["rps"]),
                _row(f"{name}: p50 ms at {concurrency}", direct["p50_ms"], measured["p50_ms"],
                     digits=2, added=True),
                _row(f"{name}: p99 ms at {concurrency}", direct["p99_ms"], measured["p99_ms"],
                     digits=2, added=True),
            ]  # fmt: skip
            if measured["failures"] or direct["failures"]:
                lines.append(
                    f"| {name}: failed requests at {concurrency} "
                    f"| {direct['failures']} direct | {measured['failures']} | |"
                )
        lines.append(f"| gateway / LiteLLM requests/s at {concurrency} | | | "
                     f"{through['rps'] / peer['rps']:.1f}x |")  # fmt: skip
    return lines


def _stream_rows(streams) -> list[str]:
    lines = []
    for count, direct, through in streams:
        lines += [
            _row(f"{count} streams: time to first chunk p50 ms", direct["ttft_p50_ms"],
                 through["ttft_p50_ms"], digits=1, added=True),
            _row(f"{count} streams: time to first chunk p99 ms", direct["ttft_p99_ms"],
                 through["ttft_p99_ms"], digits=1, added=True),
            f"| {count} streams: completed ([DONE] read) | {direct['completed']}/{count} direct "
            f"| {through['completed']}/{count} {through['errors'] or ''} | |",
            f"| {count} streams: gateway RSS MiB, per open stream KiB | "
            f"{through['rss_before_mib']:.0f} MiB idle | {through['rss_open_mib']:.0f} MiB open, "
            f"{(through['rss_open_mib'] - through['rss_before_mib']) * 1024 / count:.1f} "
            f"KiB/stream | {through['rss_open_mib'] / through['rss_before_mib']:.2f} |",
        ]  # fmt: skip
    return lines


def _ledger_rows(ledger: dict) -> list[str]:
    rows, tenants = ledger["rows"], ledger["tenants"]
    return [
        f"| ledger ingest: events/s, Redis stream to PostgreSQL (ledger_drain, batches of "
        f"{ledger['batch_size']}) | 20000 target | {ledger['ingest_per_s']:.0f} "
        f"| {ledger['ingest_per_s'] / 20000:.2f} |",
        f"| invoice close: {rows:,} rows, {tenants} tenants, seconds | 60 target "
        f"| {ledger['close_seconds']:.1f} | {ledger['close_seconds'] / 60:.2f} |",
        f"| invoice close: peak memory above resting MiB | {ledger['resting_mib']:.0f} resting "
        f"| {ledger['peak_above_resting_mib']:.1f} | |",
    ]


def _overhead_section() -> tuple[str, str]:
    """Every section before the production shape: its header line and its table."""
    upstream_port, gateway_port, peer_port = 18601, 18602, 18603
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    upstream = _start([sys.executable, "-m", "tests.fakes.upstream", str(upstream_port)], "1",
                      upstream_port)  # fmt: skip
    key = _setup(upstream_url)
    server = [str(ROOT / ".venv/bin/uvicorn"), "saas_platform.asgi:application",
              "--port", str(gateway_port), "--workers", "1", "--no-access-log",
              "--lifespan", "off", "--log-level", "warning"]  # fmt: skip
    from bench import peer as litellm

    peer = litellm.start(upstream_url, REDIS_URL, peer_port, "0", ENV)
    gateway = _start(server, "0", gateway_port)
    rows, streams = [], []
    try:
        for concurrency, total in LOADS:
            direct = _load(upstream_url, key, concurrency, total)
            through = _load(f"http://127.0.0.1:{gateway_port}/v1", key, concurrency, total)
            other = _load(f"http://127.0.0.1:{peer_port}/v1", litellm.MASTER_KEY, concurrency,
                          max(100, total // 3))  # fmt: skip
            rows.append((concurrency, direct, through, other))
        peer.terminate()
        for count in STREAMS:
            direct = _streams(upstream_url, key, STREAM_MODEL, count, None)
            through = _streams(f"http://127.0.0.1:{gateway_port}/v1", key, "fake-stream", count,
                               gateway.pid)  # fmt: skip
            streams.append((count, direct, through))
        fair = _fair_queue(f"http://127.0.0.1:{gateway_port}/v1", upstream_url)
    finally:
        peer.terminate()
        gateway.terminate()
        upstream.terminate()
    admission = _admission_rates()
    in_process, shared = _manager_rates()
    ledger = _ledger()
    cold = _cold_start()

    lines = ["| measure | baseline | measured | ratio |", "|---|---|---|---|"]
    lines += _gateway_rows(rows) + _stream_rows(streams) + fair_queue.rows(fair)
    lines += [
        *_admission_rows(admission),
        *_ledger_rows(ledger),
        f"| ResourceManager ops/s (load+touch) | {in_process:.0f} in process "
        f"| {shared:.0f} shared in Redis | {shared / in_process:.3f} |",
    ]
    if cold is not None:
        lines.append(
            f"| llama.cpp cold start through the process engine, s | {cold[1]:.2f} warm answer "
            f"| {cold[0]:.2f} to first answer | {cold[0] / cold[1]:.0f} |"
        )
    header = _versions() + f"; LiteLLM {litellm.LITELLM.split('==')[1]} ({litellm.CONFIGURATION})"
    return header, "\n".join(lines)


def _fair_queue(gateway_url: str, upstream_url: str) -> dict:
    quiet, noisy = fair_queue.setup(upstream_url)
    return fair_queue.run(gateway_url, quiet, noisy)


def _fair_queue_only() -> str:
    """`--only fair-queue`: the fake engine and one gateway, the fair queue's rows only."""
    upstream_port, gateway_port = 18611, 18612
    upstream = _start([sys.executable, "-m", "tests.fakes.upstream", str(upstream_port)], "1",
                      upstream_port)  # fmt: skip
    server = [str(ROOT / ".venv/bin/uvicorn"), "saas_platform.asgi:application",
              "--port", str(gateway_port), "--workers", "1", "--no-access-log",
              "--lifespan", "off", "--log-level", "warning"]  # fmt: skip
    gateway = _start(server, "0", gateway_port)
    try:
        fair = _fair_queue(f"http://127.0.0.1:{gateway_port}/v1",
                           f"http://127.0.0.1:{upstream_port}/v1")  # fmt: skip
    finally:
        gateway.terminate()
        upstream.terminate()
    lines = ["| measure | baseline | measured | ratio |", "|---|---|---|---|"]
    failed = (
        f"\n\n{len(fair_queue.errors)} failed: {fair_queue.errors[:5]}" if fair_queue.errors else ""
    )
    return _versions() + "\n\n" + "\n".join(lines + fair_queue.rows(fair)) + failed


PRODUCTION_MARK = "<!-- gateway-production: bench.production writes from here to the end -->"


def _production_section(seconds: float) -> str:
    """The production shape's markdown: what ran, the table, the targets, the notes."""
    from bench import peer as litellm
    from bench import production

    targets = production.run(ENV, REDIS_URL, seconds)
    header = _versions() + f"; LiteLLM {litellm.LITELLM.split('==')[1]}; {seconds:g} s a point"
    failed = production.failures(targets)
    notes = (ROOT / "bench" / "notes-production.md").read_text()
    return "\n\n".join([
        f"{PRODUCTION_MARK}\n\n## Production shape",
        "`python -m bench.run --only gateway-production [--seconds N]` runs only this section "
        "and rewrites only this part of the file. A 20 ms engine (the fake engine); in front of "
        "it, one at a time, on CPU 0: the gateway as `make serve` starts it (2 uvicorn workers, "
        "PostgreSQL, Redis, a Celery broker) with a ledger worker draining the usage stream "
        "into PostgreSQL; the anchor (`bench/anchor.py`, a raw ASGI application under the same "
        "uvicorn command); LiteLLM's proxy with 2 workers. Engine, load generator and ledger "
        "worker on CPU 1.",
        header,
        "\n".join(production.table(targets)),
        "\n".join(production.targets_table(targets)),
        *(["Did not complete:\n\n" + "\n".join(failed)] if failed else []),
        notes.strip(),
    ]) + "\n"  # fmt: skip


def _write(overhead: tuple[str, str] | None, production: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    if overhead is None:  # --only: keep the other sections as the last full run wrote them
        kept = path.read_text().split(PRODUCTION_MARK)[0].rstrip() if path.exists() else ""
        path.write_text(f"{kept}\n\n{production}" if kept else production)
        return
    header, table = overhead
    notes = (ROOT / "bench" / "notes.md").read_text()
    path.write_text(
        "# Benchmarks\n\n`make bench` writes this file. Every figure sits beside its baseline "
        "from the same run.\n\nGateway: one uvicorn worker pinned to CPU 0 (taskset), as is "
        "LiteLLM's proxy (one worker); fake engine and load generator (its own process, raw "
        "asyncio sockets) pinned to CPU 1; quotas, the ledger recorder and Redis on. Other "
        f"work on the machine shares both cores: compare within a run.\n\n{header}\n\n"
        f"{table}\n\n{notes.rstrip()}\n\n{production}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        choices=["gateway-production", "admission", "fair-queue"],
        help="run only this section (and rewrite only its part of the file)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="length of each production-shape point (default 20)",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the tables, leave docs/benchmarks.md as it is",
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    if args.only == "admission":  # prints its rows; make bench writes them with the rest
        _create_database(DATABASE_URL)
        _django()
        print("\n".join(["| measure | baseline | measured | ratio |", "|---|---|---|---|",
                         *_admission_rows(_admission_rates())]))  # fmt: skip
        return
    _create_database(DATABASE_URL)
    if args.only is None:
        _django()
    else:  # the production shape still measures the anchor and the peer without Django
        try:
            _django()
        except Exception as error:  # noqa: BLE001 - migrate or set-up failed: say so, go on
            print(f"Django is not usable, the gateway is skipped: {error}", file=sys.stderr)
    if args.only == "fair-queue":  # printed only: docs/benchmarks.md keeps the last full run
        print(_fair_queue_only())
        return
    overhead = None
    if args.only is None:
        overhead = _overhead_section()
        print(f"\n{overhead[0]}\n\n{overhead[1]}\n")
    production = _production_section(args.seconds)
    print(f"\n{production}")
    if not args.no_write:
        _write(overhead, production)


if __name__ == "__main__":
    main()
