"""LiteLLM's proxy as a peer would run it, in a virtual environment of its own (var/bench/
litellm-venv, made here from PyPI on first use; never mixed with the project's constraints).

What runs: a master key on every request, the model's tpm/rpm limits tracked in Redis by the
router (usage-based-routing-v2, shared by every proxy replica, as our admission is) and the cost
of each response computed. What cannot: virtual keys, per-key tpm limits and spend tracking
need LiteLLM's database layer, Prisma, whose query engine is a binary that `prisma generate`
downloads from Prisma's own host, not from a package registry; the proxy refuses to start with
a database URL without it. So the peer runs without PostgreSQL, which flatters it.
"""

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


def _config(upstream: str, redis_url: str) -> Path:
    path = VENV.parent / "litellm.yaml"
    path.write_text(
        f"""model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: {upstream}
      api_key: none
      tpm: 1000000000000
      rpm: 1000000000
router_settings:
  routing_strategy: usage-based-routing-v2
  redis_url: {redis_url}
general_settings:
  master_key: {MASTER_KEY}
"""
    )
    return path


def start(upstream: str, redis_url: str, port: int, cpu: str, env: dict) -> subprocess.Popen:
    """One proxy worker pinned to `cpu`, as our gateway is, ready to answer."""
    executable = ensure_installed()
    env = dict(env, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        ["taskset", "-c", cpu, executable, "--config", str(_config(upstream, redis_url)),
         "--port", str(port), "--num_workers", "1"],
        cwd=VENV.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(900):
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
