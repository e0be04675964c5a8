"""`manage.py check --deploy` is clean with the production environment the README describes, and
the same settings without HTTPS=1 keep plain-HTTP sign-in working (what `make run` needs)."""

import secrets
import subprocess
import sys

from tests.conftest import ROOT


def _check_deploy(**environment) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/unused",  # never connected to
        "ALLOWED_HOSTS": "api.example.com",
        "SITE_URL": "https://api.example.com",
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        **environment,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_check_deploy_is_clean_with_the_production_environment():
    result = _check_deploy(HTTPS="1", TRUSTED_PROXIES="10.0.0.0/8")

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_without_https_the_cookies_work_on_plain_http_and_check_deploy_says_so():
    result = _check_deploy()

    assert result.returncode != 0
    for check in ("security.W008", "security.W012", "security.W016", "security.W004"):
        assert check in result.stderr


def test_check_deploy_asks_for_site_url():
    result = _check_deploy(HTTPS="1", SITE_URL="")

    assert result.returncode != 0
    assert "saas_platform.W001" in result.stderr
    assert "SITE_URL is not set" in result.stderr
