import subprocess
import sys

from tests.conftest import ROOT


def test_healthz_is_ok_with_database_and_redis(db, client, settings):
    assert settings.REDIS_URL, "make test runs against a real Redis"

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": ["database", "redis"]}


def test_healthz_names_redis_when_it_is_unreachable(db, client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["failing"] == ["redis"]
    assert "database" not in response.json()["errors"]


def test_production_settings_refuse_to_start_without_a_secret_key():
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "saas_platform.settings"}

    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr
