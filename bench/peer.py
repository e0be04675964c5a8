"""LiteLLM's proxy as a peer would run it, in a virtual environment of its own (var/bench/
litellm-venv, made here from PyPI on first use; never mixed with the project's constraints).

What runs: a master key on every request, the model's tpm/rpm limits tracked in Redis by the
router (usage-based-routing-v2, shared by every proxy replica, as our admission is) and the cost
of each response computed. What cannot: virtual keys, per-key tpm limits and spend tracking
need LiteLLM's database layer, Prisma, whose query engine is a binary that `prisma generate`
downloads from Prisma's own host, not from a package registry; the proxy refuses to start with
a database URL without it. So the peer runs without PostgreSQL, which flatters it.
"""

import contextlib
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "var" / "bench" / "litellm-venv"
# 1.106.12: the newest release whose `proxy` extra resolves from PyPI (later ones pin
# litellm-proxy-extras builds that were never published there).
LITELLM = "litellm[proxy]==1.106.12"
MASTER_KEY = "sk-bench-master"
CONFIGURATION = "richest that runs here: master key, tpm/rpm limits in Redis, no database"


def ensure_installed() -> str:
    """The venv's litellm executable, installing it first if needed (about 1.5 minutes)."""
    executable = VENV / "bin" / "litellm"
    marker = VENV / ".installed"
    if marker.exists() and marker.read_text() == LITELLM:
        return str(executable)
    python = subprocess.run([str(ROOT / "scripts" / "find-python")], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    if not (VENV / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", LITELLM], check=True,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    marker.write_text(LITELLM)
    return str(executable)


def _config(upstream: str, redis_url: str, models: dict[str, str]) -> Path:
    """The proxy's configuration: each of `models` (our name -> the engine's) at `upstream`."""
    entries = "".join(
        f"""  - model_name: {name}
    litellm_params:
      model: "openai/{engine_model}"
      api_base: {upstream}
      api_key: none
      tpm: 1000000000000
      rpm: 1000000000
"""
        for name, engine_model in models.items()
    )
    path = VENV.parent / "litellm.yaml"
    path.write_text(
        f"""model_list:
{entries}router_settings:
  routing_strategy: usage-based-routing-v2
  redis_url: {redis_url}
general_settings:
  master_key: {MASTER_KEY}
"""
    )
    return path


def start(
    upstream: str,
    redis_url: str,
    port: int,
    cpu: str,
    env: dict,
    *,
    workers: int = 1,
    models: dict[str, str] | None = None,
    log: Path | None = None,
) -> subprocess.Popen:
    """The proxy with `workers` worker processes, pinned to `cpu` as our gateway is, ready to
    answer; `models` maps the names it serves to the engine's (default: fake -> fake). `log`
    keeps its output (else it is discarded)."""
    executable = ensure_installed()
    env = dict(env, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
    env.pop("DATABASE_URL", None)
    config = _config(upstream, redis_url, models or {"fake": "fake"})
    with open(log, "wb") if log else contextlib.nullcontext(subprocess.DEVNULL) as output:
        process = subprocess.Popen(
            ["taskset", "-c", cpu, executable, "--config", str(config),
             "--port", str(port), "--num_workers", str(workers)],
            cwd=VENV.parent, env=env, stdout=output, stderr=output,
        )  # fmt: skip
    deadline = time.monotonic() + 300  # about 30 s on a quiet machine, far more on a busy one
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=1).is_success:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("LiteLLM's proxy did not start")
