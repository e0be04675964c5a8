"""`make reliability`: the platform on localhost (its own Redis and PostgreSQL, three gateway
processes, a ledger worker with its beat, a node worker, the fake engine and a llama.cpp engine
process), put through one failure after another under a steady load. Writes
docs/reliability.md and exits non-zero if any invariant failed.

    python -m reliability.run [SCENARIO ...]     # default: all, in order
"""

import importlib.util
import os
import platform as host
import subprocess
import sys
import time
import traceback
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

from reliability import scenarios, services
from reliability.checks import TenantLimits
from reliability.harness import LEASE_SECONDS, Check, Platform, Row
from reliability.services import ROOT, VAR

NODE = "rel-node"
TENANTS = {  # slug -> quotas
    "steady": {"max_concurrent_requests": 12, "max_tokens_per_minute": 10_000_000},
    "tight": {"max_concurrent_requests": 2, "max_tokens_per_minute": 3000,
              "max_requests_per_minute": 90},
    "bystander": {"max_concurrent_requests": 8, "max_tokens_per_minute": 10_000_000},
    "failing": {"max_concurrent_requests": 6, "max_tokens_per_minute": 10_000_000},
}  # fmt: skip
FAKE_MODELS = {
    "fake": "fake?chunks=8&delay=0.03",
    "fake-long": "fake?chunks=40&delay=0.05",
    "fake-500": "fake?fail=500",
    "fake-hang": "fake?hang=1",
    "fake-cut": "fake?chunks=8&delay=0.03&cut=3",
    "fake-stall": "fake?chunks=8&delay=0.03&stall=3",
}
LLAMA = "{python} -m llama_cpp.server --model {path} --host {host} --port {port} --n_ctx 512"
FAKE_ENGINE = "{python} -m tests.fakes.upstream {port}"


def _environment(redis_url: str, database_url: str) -> dict[str, str]:
    return dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=f"{redis_url}/0",
        CELERY_BROKER_URL=f"{redis_url}/1",
        SECRET_KEY="reliability-only-secret",
        LOG_LEVEL="WARNING",
        ADMISSION_LEASE_SECONDS=str(LEASE_SECONDS),
        UPSTREAM_READ_TIMEOUT="8",  # past a cold llama.cpp answer on a busy CPU
        LEDGER_RECLAIM_IDLE_SECONDS="2",
        NODE_STATE_DIR=str(VAR / "nodes"),
        MIN_RESIDENCY_SECONDS="0",
        ROUTING_LOAD_WAIT_SECONDS="10",
        DRAIN_TIMEOUT_SECONDS="10",
        LOCAL_ENGINE_THREADS="1",
        USAGE_NDJSON_PATH=str(VAR / "usage.ndjson"),
        FAKE_UPSTREAM_LOG=str(VAR / "upstream.ndjson"),
        PYTHONUNBUFFERED="1",
    )


def _catalog(upstream_url: str) -> dict[str, TenantLimits]:
    """Models, prices, the node and the tenants; returns each tenant's limits, and its key."""
    from billing.pricing import price_set
    from models_mgmt.engines.local import bundled_gguf
    from models_mgmt.placements import node_add
    from models_mgmt.services import model_register
    from tenants import services as tenants

    for model_id, name in FAKE_MODELS.items():
        model_register(model_id=model_id, engine="openai", base_url=upstream_url,
                       upstream_model=name)  # fmt: skip
        price_set(model_id=model_id, input_per_million=Decimal("0.5"),
                  output_per_million=Decimal("1.5"),
                  effective_from=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    node_add(name=NODE, vram_bytes=1000)
    llama = importlib.util.find_spec("llama_cpp") is not None
    model_register(model_id="llama", engine="process", vram_bytes=600,
                   command=LLAMA if llama else FAKE_ENGINE,
                   path=str(bundled_gguf()) if llama else "")  # fmt: skip
    model_register(model_id="proc-b", engine="process", vram_bytes=500, command=FAKE_ENGINE)
    limits, keys = {}, {}
    for slug, quotas in TENANTS.items():
        tenant = tenants.tenant_register(slug=slug, **quotas)
        keys[slug] = tenants.apikey_issue(tenant=tenant, name="reliability").plaintext
        limits[slug] = TenantLimits(tenant.pk, quotas["max_concurrent_requests"],
                                    quotas["max_tokens_per_minute"],
                                    quotas.get("max_requests_per_minute"))  # fmt: skip
    return limits, keys


def start_platform() -> Platform:
    services.prepare_folders()
    redis, postgres = services.OwnRedis(), services.OwnPostgres()
    redis.start()
    postgres.init()
    env = _environment(redis.url, postgres.url)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env,
                   check=True)  # fmt: skip
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "saas_platform.settings"
    import django

    django.setup()
    upstream_port = services.free_port()
    upstream = services.fake_upstream(upstream_port, env).start()
    limits, keys = _catalog(f"http://127.0.0.1:{upstream_port}/v1")
    ports = [services.free_port() for _ in range(3)]
    gateways = [services.gateway(f"gateway-{i}", port, env) for i, port in enumerate(ports)]
    gateways[2].env = dict(env, ADMISSION_FAIL_OPEN="1")
    for gateway in gateways:
        gateway.start()
    ledger = services.ledger_worker(env).start()
    node = services.node_worker(NODE, env).start()
    return Platform(redis=redis, postgres=postgres, env=env, gateways=gateways,
                    urls=[f"http://127.0.0.1:{p}" for p in ports], upstream=upstream,
                    ledger=ledger, node=node, keys=keys, limits=limits, node_name=NODE)  # fmt: skip


def stop_platform(platform: Platform | None) -> None:
    if platform is None:
        return
    for proc in [*platform.gateways, platform.node, platform.ledger, platform.upstream]:
        proc.stop()
    from django.db import connections

    from models_mgmt.models import Node
    from models_mgmt.placements import engine_processes

    try:
        engines = engine_processes(Node.objects.get(name=NODE))
        for model_id in [engine.model_id for engine in engines.running()]:
            engines.stop(model_id)
    except Exception:  # noqa: BLE001 - clean-up only; the engines' records are in var/
        traceback.print_exc()
    connections.close_all()
    platform.redis.proc.stop()
    platform.postgres.stop()


def _versions(platform: Platform) -> str:
    import django

    return (f"{datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC; Python {host.python_version()}, "
            f"Django {django.get_version()}, Redis {platform.redis.version()}, "
            f"PostgreSQL {platform.postgres.version()}; {os.cpu_count()} CPUs")  # fmt: skip


def _table(rows: list[Row]) -> str:
    lines = ["| scenario | sent | admitted | completed | refused / unanswered, by reason "
             "| usage events stored | slots leaked | bytes over budget | invariants | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        refused = ", ".join(f"{r}: {n}" for r, n in row.refused.most_common()) or "none"
        failed = [c.name for c in row.checks if not c.ok]
        verdict = (f"PASS ({len(row.checks)})" if row.ok
                   else "FAIL: " + "; ".join(failed))  # fmt: skip
        lines.append(f"| {row.name} | {row.sent} | {row.admitted} | {row.completed} | {refused} "
                     f"| {row.stored} | {row.leaked} | {row.bytes_over} | {verdict} "
                     f"| {row.seconds:.0f} |")  # fmt: skip
    return "\n".join(lines)


def _details(rows: list[Row]) -> str:
    parts = []
    for row in rows:
        parts.append(f"### {row.name}\n")
        parts += [f"- {'pass' if c.ok else '**FAIL**'}: {c.name}: {c.detail}" for c in row.checks]
        parts.append("")
    return "\n".join(parts)


def write_report(platform: Platform, rows: list[Row], seconds: float) -> str:
    header = _versions(platform)
    text = (
        "# Reliability\n\n`make reliability` (`python -m reliability.run`) writes this file. It "
        "starts its own Redis (append-only file, fsync always) and PostgreSQL cluster on free "
        "loopback ports, three gateway processes (uvicorn; the third with ADMISSION_FAIL_OPEN=1), "
        "a ledger worker with its beat, a node worker, the fake engine and a llama.cpp engine "
        "process, then breaks one thing per scenario under a steady load (tenants `steady`, "
        f"`tight`: 2 concurrent, 3000 tokens and 90 requests a minute). Lease: {LEASE_SECONDS} s; "
        "engine read timeout: 8 s.\n\n"
        "Admitted: the gateway answered with a request id and did not refuse it (engine failures "
        "after admission count). Usage events stored: ledger rows of admitted requests. Slots "
        "leaked: leases still held 1.5 s after the last request ended. Bytes over budget: the "
        "most any node's placements held above its budget at any sample.\n\n"
        f"{header}; {seconds:.0f} s in all.\n\n{_table(rows)}\n\n## Invariants, scenario by "
        f"scenario\n\n{_details(rows)}"
    )
    (ROOT / "docs" / "reliability.md").write_text(text)
    return f"{header}\n\n{_table(rows)}\n\n{_details(rows)}"


def main(names: list[str]) -> int:
    chosen = [s for s in scenarios.SCENARIOS if not names or s.__name__ in names]
    began = time.monotonic()
    platform, rows = None, []
    try:
        platform = start_platform()
        for scenario in chosen:
            print(f"-- {scenario.__name__}", flush=True)
            try:
                rows.append(scenario(platform))
            except Exception as error:  # noqa: BLE001 - one broken scenario fails, others run
                traceback.print_exc()
                failed = Check("ran to the end", False, repr(error)[:300])
                rows.append(Row(scenario.__name__, 0, 0, 0, Counter(), 0, 0, 0, [failed], 0))
            print(f"   {'PASS' if rows[-1].ok else 'FAIL'}", flush=True)
        print(write_report(platform, rows, time.monotonic() - began))
    finally:
        stop_platform(platform)
    return 0 if rows and all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
