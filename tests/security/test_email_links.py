"""Password-reset and invitation links sign a person in: they must reach that person only.
The console email backend (the server's log) was the default even in production, and the
portal's reset form sent a link for any account, the operator's staff included."""

import subprocess
import sys

import httpx
from django.contrib.auth import get_user_model

from tests.conftest import ROOT
from tests.security.conftest import own_gateway, post_form, sent_mail

PRODUCTION = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "x" * 50,
              "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/unused"}  # fmt: skip


def _check(**environment) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
        env={**PRODUCTION, **environment}, timeout=60, check=False,
    )  # fmt: skip


def test_without_debug_the_server_will_not_start_on_the_console_by_default(subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k not in ("EMAIL_BACKEND", "DJANGO_DEBUG")}
    env.update(HOST="127.0.0.1", PORT="1")  # never reached: it stops first
    served = subprocess.run(["make", "--no-print-directory", "serve"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

    assert served.returncode != 0
    assert "EMAIL_BACKEND is required unless DJANGO_DEBUG=1" in served.stderr


def test_the_console_backend_still_works_when_asked_for_or_in_debug():
    asked = _check(EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend")
    debug = _check(DJANGO_DEBUG="1")
    neither = _check()

    assert asked.returncode == 0, asked.stderr
    assert debug.returncode == 0, debug.stderr
    assert neither.returncode != 0
    assert "EMAIL_BACKEND" in neither.stderr


def test_the_portal_sends_no_reset_link_for_a_staff_account(transactional_db, tmp_path):
    users = get_user_model().objects
    users.create_superuser("root", "ops@example.com", "operator-pass-1")
    users.create_user("staffer", "staff@example.com", "staff-pass-12", is_staff=True)
    users.create_user("erin", "erin@example.com", "erin-pass-123")
    mail = tmp_path / "mail"
    backend = "django.core.mail.backends.filebased.EmailBackend"
    with (
        own_gateway(tmp_path, EMAIL_BACKEND=backend, EMAIL_FILE_PATH=str(mail)) as gateway,
        httpx.Client(base_url=gateway.url) as client,
    ):
        answers = [post_form(client, "/portal/password/reset/", {"email": email})
                   for email in ("ops@example.com", "staff@example.com")]  # fmt: skip
        staff_mail = sent_mail(mail)
        post_form(client, "/portal/password/reset/", {"email": "erin@example.com"})

    # The same answer as for any address (nothing tells an attacker which ones are staff)...
    assert [a.status_code for a in answers] == [302, 302]
    # ...but no link was sent; the member's still is.
    assert staff_mail == []
    (message,) = sent_mail(mail)
    assert message.to == "erin@example.com"
    assert "/portal/password/reset/" in message.body


def test_a_reset_link_points_at_site_url_whatever_host_the_request_names(transactional_db,
                                                                       tmp_path):  # fmt: skip
    """The Host header is the client's to choose (here one ALLOWED_HOSTS lets through): a link
    built from it would carry the reset token to the attacker's host."""
    get_user_model().objects.create_user("erin", "erin@example.com", "erin-pass-123")
    mail = tmp_path / "mail"
    backend = "django.core.mail.backends.filebased.EmailBackend"
    with (
        own_gateway(tmp_path, EMAIL_BACKEND=backend, EMAIL_FILE_PATH=str(mail),
                    ALLOWED_HOSTS="127.0.0.1,attacker.example",
                    SITE_URL="https://portal.example.com") as gateway,
        httpx.Client(base_url=gateway.url, headers={"Host": "attacker.example"}) as client,
    ):  # fmt: skip
        post_form(client, "/portal/password/reset/", {"email": "erin@example.com"})

    (message,) = sent_mail(mail)
    assert "https://portal.example.com/portal/password/reset/" in message.body
    assert "attacker.example" not in message.body
