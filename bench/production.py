"""The gateway in its production shape against the floor and the peer, on the same two cores.

    python -m bench.run --only gateway-production [--seconds 5]

runs only this section (20 s points by default) and rewrites only its part of
docs/benchmarks.md; `make bench` runs it after the other sections.

What runs: an engine that answers in 20 ms (the fake engine, `fake?chunks=5&delay=0.004`) and,
one at a time in front of it, on CPU 0:

- the gateway exactly as `make serve` starts it (the command is read from the Makefile, with
  WORKERS=2), on PostgreSQL, Redis and a Celery broker, with a ledger worker (Celery with its
  beat) draining the usage stream into PostgreSQL;
- the anchor (bench/anchor.py): a raw ASGI application under the same uvicorn command, one
  Redis round trip to admit and one to finish, the floor a Python gateway can reach;
- LiteLLM's proxy with 2 workers and a master key, no database (bench/peer.py).

The load generator (bench/loadgen.py `duration`), the engine and the ledger worker run on
CPU 1. Each point is SECONDS of closed-loop load at concurrency 1, 64 and 256 after a one-second
warm-up, each request given 2 s; the server's CPU is utime + stime of its master and every
descendant, read from /proc at the start and end of the measured window.
"""

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import peer as litellm
from bench.loadgen import cpu_seconds, process_tree

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "var" / "bench" / "production"
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/9")
CONCURRENCIES = (1, 64, 256)
ENGINE_MODEL = "fake?chunks=5&delay=0.004"  # 5 tokens, answered after 5 x 4 ms = 20 ms
MODEL = "fake-20ms"  # its name in the gateway's catalog and LiteLLM's configuration
PORTS = {"engine": 18611, "gateway": 18612, "anchor": 18613, "litellm": 18614}
SERVERS_CPU, LOAD_CPU = "0", "1"
# A point during which other processes (not the bench's, not Redis or PostgreSQL) used more
# than this many cores is marked: the machine was not quiet.
DISTURBED_CORES = 0.15
TARGETS = {  # the figures the gateway is held to; each is shown met or missed
    "cpu_ms": 1.5,  # server CPU per request at concurrency 64, at most
    "vs_anchor": 0.8,  # requests/s at 64 against the anchor's, at least
    "vs_litellm": 8.0,  # requests/s at 64 against LiteLLM's, at least
    "added_p50_ms": 3.0,  # gateway p50 - direct p50 at concurrency 1, at most
}


@dataclass
class Target:
    name: str
    url: str
    key: str
    model: str
    server: subprocess.Popen | None = None
    points: dict[int, dict] = field(default_factory=dict)
    failure: str = ""


def serve_command(port: int, workers: int = 2) -> list[str]:
    """`make serve`'s command line, as the Makefile has it today (make -n prints it; -o keeps
    make from rebuilding the virtual environment first)."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-s", "-n", "-o", ".venv/.installed",
         "-o", "node_modules/.installed", "serve", "HOST=127.0.0.1", f"PORT={port}",
         f"WORKERS={workers}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = [part for part in out.replace("\\\n", " ").splitlines() if "uvicorn" in part]
    if not lines:
        raise RuntimeError(f"no uvicorn command in `make -n serve`: {out[:200]}")
    return shlex.split(lines[-1])


def _spawn(name: str, command: list[str], env: dict, cpu: str) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / f"{name}.log", "wb") as log:
        return subprocess.Popen(["taskset", "-c", cpu, *command], cwd=ROOT, env=env,
                                stdout=log, stderr=log)  # fmt: skip


def _log_tail(name: str) -> str:
    path = LOGS / f"{name}.log"
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1][:300] if lines else "no output"


def stop(process: subprocess.Popen | None) -> None:
    """Terminate a server and whatever it started (by pid), killing what outlives 15 s."""
    if process is None or process.poll() is not None:
        return
    others = [pid for pid in process_tree([process.pid]) if pid != process.pid]
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in others:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _ready(target: Target, timeout: float = 60) -> None:
    """Until a chat request through the target answers 200; raises with what it answered."""
    body = {"model": target.model, "messages": [{"role": "user", "content": "hi"}]}
    answer, deadline = "no answer", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.server is not None and target.server.poll() is not None:
            raise RuntimeError(f"exited {target.server.returncode}: {_log_tail(target.name)}")
        try:
            response = httpx.post(f"{target.url}/chat/completions", json=body, timeout=5,
                                  headers={"Authorization": f"Bearer {target.key}"})  # fmt: skip
            if response.status_code == 200:
                return
            answer = f"answers {response.status_code}: {response.text[:200]}"
        except httpx.TransportError as error:
            answer = f"{type(error).__name__}"
        time.sleep(0.5)
    raise RuntimeError(answer)


def _settle(process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the server and its workers are idle (under 5% of a core over a second): a worker
    still importing or warming its caches would otherwise spend its CPU inside the first point.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        before = cpu_seconds([process.pid])
        time.sleep(1)
        if cpu_seconds([process.pid]) - before < 0.05:
            return


def catalog(upstream: str) -> tuple[str, str, str]:
    """The 20 ms model in the gateway's catalog, and a tenant with room for every load: its key,
    its id and the key's prefix (the anchor's usage events carry them). Django is set up."""
    import uuid

    from models_mgmt.services import model_register
    from tenants import services

    model_register(model_id=MODEL, engine="openai", base_url=upstream, upstream_model=ENGINE_MODEL)
    tenant = services.tenant_register(slug=f"bench-prod-{uuid.uuid4().hex[:8]}",
                                      max_concurrent_requests=10_000,
                                      max_tokens_per_minute=10**12)  # fmt: skip
    issued = services.apikey_issue(tenant=tenant, name="bench-production")
    return issued.plaintext, str(tenant.pk), issued.api_key.display_prefix


def _stream_name() -> str:
    try:
        from billing.ledger import STREAM
    except Exception:  # noqa: BLE001 - the gateway mid-rewrite: the anchor still runs
        return "usage:events"
    return STREAM


class Ledger:
    """The ledger worker (Celery, with its beat, on the default queue) and the stream it drains."""

    def __init__(self, env: dict, redis_url: str):
        import redis

        self.redis = redis.Redis.from_url(redis_url)
        self.stream = _stream_name()
        if BROKER_URL.startswith("redis"):
            redis.Redis.from_url(BROKER_URL).flushdb()  # the bench's own broker: no old tasks
        command = [str(ROOT / ".venv/bin/celery"), "-A", "saas_platform", "worker", "-B",
                   "-Q", "celery", "--concurrency", "1", "--loglevel", "WARNING",
                   "--schedule", str(LOGS / "celerybeat-schedule")]  # fmt: skip
        self.process = _spawn("ledger-worker", command, env, LOAD_CPU)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def backlog(self) -> int:
        return int(self.redis.xlen(self.stream))

    def wait_drained(self, timeout: float) -> bool:
        """Until the stream is empty (the drain deletes what it stored); False if it never was."""
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            if self.backlog() == 0:
                return True
            time.sleep(0.2)
        return False

    def cpu(self) -> float:
        return cpu_seconds([self.process.pid])


def _ping_while(process: subprocess.Popen, redis_url: str) -> list[float]:
    """Redis PING round trips (ms), ten a second, while `process` runs: a Redis slowed by other
    work on the machine shows here, apart from the target's own cost."""
    import redis

    client, pings = redis.Redis.from_url(redis_url, socket_timeout=5), []
    while process.poll() is None:
        started = time.perf_counter()
        try:
            client.ping()
        except redis.RedisError:
            pings.append(5000.0)
        else:
            pings.append((time.perf_counter() - started) * 1000)
        time.sleep(0.1)
    client.close()
    return pings


def _point(
    target: Target, concurrency: int, seconds: float, ledger: Ledger | None, redis_url: str
) -> dict:
    pids = [str(target.server.pid)] if target.server is not None else []
    counts_events = ledger is not None and ledger.running and target.name in ("gateway", "anchor")
    if ledger is not None:
        ledger.wait_drained(120)  # the last point's events do not compete with this one
    ledger_before = ledger.cpu() if counts_events else 0.0
    load = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, sys.executable, "-m", "bench.loadgen", "duration",
         target.url, target.key, target.model, str(concurrency), str(seconds), *pids],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pings = _ping_while(load, redis_url)
    stdout, stderr = load.communicate()
    if load.returncode:
        said = (stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise RuntimeError(f"load generator at concurrency {concurrency}: {said}")
    result = dict(json.loads(stdout), redis_ping_max_ms=max(pings, default=None))
    if counts_events:
        result["backlog"] = ledger.backlog()
        drained = ledger.wait_drained(120)
        events = result["requests"] + result["warm_up_requests"]
        if drained and events:
            result["ledger_ms_per_event"] = (ledger.cpu() - ledger_before) * 1000 / events
    return result


def _start_server(target: Target, env: dict, redis_url: str, upstream: str) -> None:
    port = PORTS.get(target.name)
    if target.name == "gateway":
        target.server = _spawn("gateway", serve_command(port), env, SERVERS_CPU)
    elif target.name == "anchor":
        command = [part.replace("saas_platform.asgi:application", "bench.anchor:app")
                   for part in serve_command(port)]  # fmt: skip
        target.server = _spawn("anchor", command, env, SERVERS_CPU)
    elif target.name == "litellm":
        target.server = litellm.start(upstream, redis_url, port, SERVERS_CPU, env, workers=2,
                                      models={MODEL: ENGINE_MODEL},
                                      log=LOGS / "litellm.log")  # fmt: skip


def run(env: dict, redis_url: str, seconds: float) -> list[Target]:
    """Every target at every concurrency; a target that does not start is reported, not fatal.
    Django should be set up in this process (for the catalog): if it is not, or the catalog
    fails, the gateway and the ledger worker are skipped and the anchor uses a throwaway key
    and a stream of its own (nothing drains it; it is deleted afterwards)."""
    import redis

    env = dict(env, CELERY_BROKER_URL=BROKER_URL)
    upstream = f"http://127.0.0.1:{PORTS['engine']}/v1"
    base = "http://127.0.0.1:{}/v1"
    try:
        key, tenant_id, prefix = catalog(upstream)
        stream, broken = _stream_name(), ""
    except Exception as error:  # noqa: BLE001 - reported in the table; the rest still runs
        key, tenant_id, prefix = f"sk-bench-{os.urandom(8).hex()}", "0", ""
        stream, broken = "bench:anchor-events", f"catalog: {type(error).__name__}: {error}"
    env_anchor = dict(env, ANCHOR_API_KEY=key, ANCHOR_UPSTREAM=upstream,
                      ANCHOR_TENANT_ID=tenant_id, ANCHOR_KEY_PREFIX=prefix,
                      ANCHOR_STREAM=stream)  # fmt: skip
    targets = [
        Target("direct", upstream, key, ENGINE_MODEL),
        Target("gateway", base.format(PORTS["gateway"]), key, MODEL, failure=broken),
        Target("anchor", base.format(PORTS["anchor"]), key, ENGINE_MODEL),
        Target("litellm", base.format(PORTS["litellm"]), litellm.MASTER_KEY, MODEL),
    ]
    engine = _spawn("engine", [sys.executable, "-m", "tests.fakes.upstream",
                               str(PORTS["engine"])], env, LOAD_CPU)  # fmt: skip
    ledger = None
    try:
        _ready(Target("engine", upstream, key, ENGINE_MODEL))
        if not broken:
            ledger = Ledger(env, redis_url)
            ledger.wait_drained(300)  # what earlier runs left in the stream
        for target in targets:
            if target.failure:
                continue
            try:
                _start_server(target, env_anchor if target.name == "anchor" else env, redis_url,
                              upstream)  # fmt: skip
                _ready(target)
                if target.server is not None:
                    _settle(target.server)
                for concurrency in CONCURRENCIES:
                    target.points[concurrency] = _point(target, concurrency, seconds, ledger,
                                                       redis_url)  # fmt: skip
                    print(f"{target.name} c={concurrency}: {target.points[concurrency]}",
                          file=sys.stderr, flush=True)  # fmt: skip
            except (RuntimeError, subprocess.CalledProcessError, ValueError) as error:
                # the points measured before it stay in the table
                target.failure = str(error) or type(error).__name__
                print(f"{target.name}: {target.failure}", file=sys.stderr, flush=True)
            finally:
                stop(target.server)
        if ledger is not None and not ledger.running:
            targets[1].failure = targets[1].failure or (
                f"ledger worker exited: {_log_tail('ledger-worker')}"
            )
    finally:
        stop(ledger.process if ledger else None)
        stop(engine)
        if broken:
            redis.Redis.from_url(redis_url).delete(stream)
    return targets


def _cell(text: str) -> str:
    """Text that keeps a markdown table (or list item) in one piece."""
    return " ".join(text.replace("|", "/").split())


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(targets: list[Target]) -> list[str]:
    lines = ["| target | concurrency | requests/s | p50 ms | p99 ms | errors | timeouts "
             "| server CPU ms/request | ledger worker CPU ms/event | CPU 0 / CPU 1 busy % "
             "| Redis PING max ms | other work, cores |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for target in targets:
        if target.failure and not target.points:
            lines.append(f"| {target.name} | did not run: {_cell(target.failure)} |" + " |" * 10)
        for concurrency, point in target.points.items():
            mark = " *" if point["other_cores"] > DISTURBED_CORES else ""
            lines.append(
                f"| {target.name}{mark} | {concurrency} | {point['rps']:.0f} "
                f"| {_number(point['p50_ms'], 2)} | {_number(point['p99_ms'], 2)} "
                f"| {point['errors']} | {point['timeouts']} "
                f"| {_number(point['cpu_ms_per_request'], 2)} "
                f"| {_number(point.get('ledger_ms_per_event'), 2)} "
                f"| {' / '.join(map(str, point['cpu_busy_percent']))} "
                f"| {_number(point['redis_ping_max_ms'], 1)} | {point['other_cores']:.2f} |"
            )
    if any(" *" in line.split("|")[1] for line in lines[2:]):
        lines += ["", f"\\* other work on the machine used more than {DISTURBED_CORES} of a core "
                  "during the point: compare it with care"]  # fmt: skip
    return lines


def _verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def targets_table(targets: list[Target]) -> list[str]:
    """Each of the issue's targets, met or missed, with measured / target."""
    by_name = {target.name: target.points for target in targets}
    gateway, anchor = by_name["gateway"], by_name["anchor"]
    direct, peer = by_name["direct"], by_name["litellm"]
    lines = ["| target | wanted | measured | measured / wanted | |", "|---|---|---|---|---|"]

    def row(label: str, wanted: str, value: float | None, limit: float, at_most: bool) -> None:
        if value is None:
            lines.append(f"| {label} | {wanted} | not measured | | |")
            return
        met = value <= limit if at_most else value >= limit
        lines.append(
            f"| {label} | {wanted} | {value:.2f} | {value / limit:.2f} | {_verdict(met)} |"
        )

    cpu = gateway.get(64, {}).get("cpu_ms_per_request")
    row("gateway CPU per request at concurrency 64, ms", f"≤ {TARGETS['cpu_ms']}", cpu,
        TARGETS["cpu_ms"], at_most=True)  # fmt: skip
    rps = gateway.get(64, {}).get("rps")
    for name, points, key in (("anchor", anchor, "vs_anchor"), ("LiteLLM", peer, "vs_litellm")):
        other = points.get(64, {}).get("rps")
        row(f"gateway / {name} requests/s at concurrency 64", f"≥ {TARGETS[key]}",
            rps / other if rps is not None and other else None, TARGETS[key],
            at_most=False)  # fmt: skip
    if 256 in gateway:
        point = gateway[256]
        failed = point["errors"] + point["timeouts"]
        lines.append(
            f"| gateway at concurrency 256: requests failed or timed out | 0 "
            f"| {point['errors']} errors, {point['timeouts']} timeouts of "
            f"{point['requests'] + failed} | | {_verdict(failed == 0)} |"
        )
    else:
        lines.append("| gateway at concurrency 256: requests failed or timed out | 0 "
                     "| not measured | | |")  # fmt: skip
    added = None
    if gateway.get(1, {}).get("p50_ms") is not None and direct.get(1, {}).get("p50_ms"):
        added = gateway[1]["p50_ms"] - direct[1]["p50_ms"]
    row("gateway p50 - direct p50 at concurrency 1, ms", f"≤ {TARGETS['added_p50_ms']}", added,
        TARGETS["added_p50_ms"], at_most=True)  # fmt: skip
    return lines


def failures(targets: list[Target]) -> list[str]:
    return [f"- {target.name}: {_cell(target.failure)}" for target in targets if target.failure]
