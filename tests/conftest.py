"""Shared fixtures: an owner tenant (acme, with alice as owner and bob as member) and an
outsider tenant (globex, with charlie), as healthchecks names them, so isolation is tested."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection

from tenants import services
from tenants.models import Membership

ROOT = Path(__file__).resolve().parent.parent

# The real gateway, engines, a browser and their fixtures, for every test folder.
pytest_plugins = ["tests.gateway_server", "tests.browser", "tests.redis_cluster"]


def engines_left_behind(folder: Path) -> list[int]:
    """Live processes started for this run's tests that outlived them: engines (they carry
    their state folder in the environment) and any process whose command names a file under
    this run's temporary folder."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone, or another user's
            continue
        marked = [v for v in environ if v.startswith(b"ENGINE_PROCESSES_STATE_DIR=")]
        state_dir = marked[0].partition(b"=")[2] if marked else b""
        if state_dir.startswith(bytes(folder)) or bytes(folder) + b"/" in cmdline:
            left.append(int(entry.name))
    return left


@pytest.fixture(scope="session", autouse=True)
def _no_engine_left_behind(tmp_path_factory):
    """Fails the run if a test left an engine (or another process of its own) running: such a
    process holds memory and ports for hours, reparented to init."""
    folder = tmp_path_factory.getbasetemp().resolve()
    yield
    deadline = time.monotonic() + 10  # a stop under way (a server's graceful exit) may finish
    while (left := engines_left_behind(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    commands = []
    for pid in left:
        with contextlib.suppress(OSError):
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
            os.kill(pid, signal.SIGKILL)
    if left:
        pytest.fail(f"Tests left {len(left)} process(es) running, now killed: {commands}")


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def acme(db):
    return services.tenant_register(slug="acme", name="Acme Corp", max_concurrent_requests=4)


@pytest.fixture
def globex(db):
    return services.tenant_register(slug="globex", name="Globex")


@pytest.fixture
def alice(acme):
    user = get_user_model().objects.create_user("alice", "alice@example.com", "pw-alice-123")
    services.membership_set(tenant=acme, user=user, role=Membership.Role.OWNER)
    return user


@pytest.fixture
def bob(acme):
    user = get_user_model().objects.create_user("bob", "bob@example.com", "pw-bob-123")
    services.membership_set(tenant=acme, user=user, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def charlie(globex):
    user = get_user_model().objects.create_user("charlie", "charlie@example.com", "pw-ch-123")
    services.membership_set(tenant=globex, user=user, role=Membership.Role.OWNER)
    return user


@pytest.fixture
def acme_key(acme):
    return services.apikey_issue(tenant=acme, name="ci")


def database_url_of_test_db() -> str:
    params = connection.settings_dict
    if params["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or ""
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    host = f"{params['HOST'] or '127.0.0.1'}:{params['PORT'] or 5432}"
    return f"postgres://{auth}{host}/{params['NAME']}"


@pytest.fixture
def subprocess_env(transactional_db) -> dict[str, str]:
    """Environment for a real child process (manage.py, a server) that sees the test database."""
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url_of_test_db()
    env.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")
    return env


@pytest.fixture
def manage(subprocess_env):
    """Run `python manage.py ...` as a script would, returning the completed process."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            capture_output=True,
            text=True,
            env=subprocess_env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    return run


def tenant_admin_form(**overrides) -> dict[str, str]:
    """The admin's tenant change form as a browser posts it (no member or key rows)."""
    data = {
        "slug": "initech",
        "name": "Initech",
        "max_concurrent_requests": "2",
        "max_tokens_per_minute": "1000",
        "max_requests_per_minute": "",
        "model_allow_list": "[]",
        "monthly_budget": "",
        "queue_weight": "1",
        "max_queued_requests": "",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return data
