"""deploy/systemd/: the units pass `systemd-analyze verify` (installed where the code is, which
is all the copy changes), run `make serve`'s command, and read only variables the platform
knows."""

import re
import shlex
import subprocess

from tests.conftest import ROOT
from tests.deploy.tools import tool

UNITS = ROOT / "deploy" / "systemd"
INSTALLED_AT = "/srv/saas-platform"


def _installed(tmp_path) -> list[str]:
    """The units as installed with the code at this checkout (their ExecStart must exist)."""
    names = []
    for unit in sorted(UNITS.glob("*.service")):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_AT, str(ROOT)))
        names.append(unit.name.replace("@.service", "@gpu-1.service"))
    return names


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    units = _installed(tmp_path)

    result = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", *(f"./{name}" for name in units)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert units == [
        "platform-gateway.service",
        "platform-ledger.service",
        "platform-node@gpu-1.service",
    ]
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # not even a warning


def _exec_start(unit: str) -> list[str]:
    (line,) = re.findall(r"^ExecStart=(.*)$", (UNITS / unit).read_text(), re.M)
    return shlex.split(line)


def test_the_gateway_runs_make_serves_command_and_the_workers_the_readmes():
    serve = re.search(r"^serve:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)[1]
    server_line = serve[serve.index("uvicorn") :]  # the server itself, not the check before it
    serve_options = set(re.findall(r"--[a-z-]+", server_line))

    gateway = _exec_start("platform-gateway.service")
    ledger = _exec_start("platform-ledger.service")
    node = _exec_start("platform-node@.service")

    assert gateway[:2] == [f"{INSTALLED_AT}/.venv/bin/uvicorn", "saas_platform.asgi:application"]
    makefile = (ROOT / "Makefile").read_text()
    shared = re.search(r"^SERVER_OPTIONS := ((?:.*\\\n)*.*)$", makefile, re.M)[1]
    serve_options |= set(re.findall(r"--[a-z-]+", shared))
    assert {
        "--host",
        "--port",
        "--workers",
        "--no-access-log",
        "--no-proxy-headers",
    } <= serve_options
    assert serve_options <= set(gateway)
    assert ledger[1:5] == ["-A", "saas_platform", "worker", "-B"]
    assert node[1:6] == ["-A", "saas_platform", "worker", "-Q", "node.%i"]
    assert "--pool" in node
    assert "solo" in node


def test_the_environment_file_names_only_settings_the_platform_reads():
    known = set(
        re.findall(r'env_\w+\(\s*"([A-Z_]+)"', (ROOT / "saas_platform/settings.py").read_text())
    )
    known |= {"HOST", "PORT", "WORKERS", "PROMETHEUS_MULTIPROC_DIR"}
    example = (UNITS / "platform.env.example").read_text()
    named = set(re.findall(r"^#?([A-Z_]+)=", example, re.M))

    assert named - known == set()
    assert {
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "SECRET_KEY",
        "HTTPS",
        "TRUSTED_PROXIES",
        "OPERATOR_EMAILS",
    } <= named
    for unit in UNITS.glob("*.service"):
        assert "EnvironmentFile=/etc/saas-platform/platform.env" in unit.read_text(), unit.name
