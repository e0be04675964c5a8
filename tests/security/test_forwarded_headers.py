"""Forwarded headers are believed from TRUSTED_PROXIES only (none by default). Before, uvicorn
believed them from loopback, so anything on the machine (or a proxy passing the client's own
X-Forwarded-For through) chose its address: /metrics opened to a spoofed allowed address, every
failed sign-in came "from" somewhere new and the lockout never triggered, and a forged
X-Forwarded-Proto made plain HTTP count as HTTPS."""

import subprocess
import sys

import httpx
import pytest
from django.contrib.auth import get_user_model

from tests.conftest import ROOT
from tests.security.conftest import own_gateway, post_form


def _sign_in(client: httpx.Client, username: str, password: str, *, forwarded_for: str):
    return post_form(client, "/portal/login/", {"username": username, "password": password},
                     headers={"X-Forwarded-For": forwarded_for})  # fmt: skip


def test_a_spoofed_forwarded_for_does_not_open_metrics(transactional_db, tmp_path):
    spoof = {"X-Forwarded-For": "10.9.9.9"}
    with own_gateway(tmp_path, METRICS_ALLOWED_IPS="10.9.9.9") as gateway:
        spoofed = httpx.get(f"{gateway.url}/metrics", headers=spoof)
    with own_gateway(tmp_path, METRICS_ALLOWED_IPS="10.9.9.9",
                     TRUSTED_PROXIES="127.0.0.0/8") as behind_proxy:  # fmt: skip
        from_the_proxy = httpx.get(f"{behind_proxy.url}/metrics", headers=spoof)
        the_proxy_itself = httpx.get(f"{behind_proxy.url}/metrics")

    assert spoofed.status_code == 403
    assert from_the_proxy.status_code == 200  # a trusted proxy's word is taken
    assert "gateway_requests_total" in from_the_proxy.text
    assert the_proxy_itself.status_code == 403


def test_metrics_token_is_required_when_set(transactional_db, tmp_path):
    with own_gateway(tmp_path, METRICS_TOKEN="scrape-secret-42") as gateway:
        bare = httpx.get(f"{gateway.url}/metrics")
        wrong = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": "Bearer nope"})
        right = httpx.get(f"{gateway.url}/metrics",
                          headers={"Authorization": "Bearer scrape-secret-42"})  # fmt: skip

    assert (bare.status_code, wrong.status_code, right.status_code) == (403, 403, 200)


def test_rotating_forwarded_for_does_not_escape_the_sign_in_lockout(gateway, transactional_db):
    get_user_model().objects.create_user("dora", "dora@example.com", "the-right-pass-9")

    with httpx.Client(base_url=gateway.url) as client:
        failures = [_sign_in(client, "dora", f"guess-{n}", forwarded_for=f"203.0.113.{n}")
                    for n in range(5)]  # fmt: skip
        with_the_password = _sign_in(client, "dora", "the-right-pass-9",
                                     forwarded_for="203.0.113.77")  # fmt: skip

    # The form again with its error, until the fifth failure from one address locks it out.
    assert [f.status_code for f in failures] == [200, 200, 200, 200, 429]
    assert with_the_password.status_code == 429
    assert "_auth_user_id" not in with_the_password.headers.get("set-cookie", "")


@pytest.mark.parametrize(
    ("trusted", "status"),
    [("", 301), ("127.0.0.1", 200)],
    ids=["untrusted peer: redirected to https", "trusted proxy: already https"],
)
def test_forwarded_proto_counts_only_from_a_trusted_proxy(transactional_db, tmp_path, trusted,
                                                          status):  # fmt: skip
    with own_gateway(tmp_path, HTTPS="1", TRUSTED_PROXIES=trusted) as gateway:
        response = httpx.get(f"{gateway.url}/portal/login/",
                             headers={"X-Forwarded-Proto": "https"})  # fmt: skip

    assert response.status_code == status
    if status == 301:
        assert response.headers["location"].startswith("https://")


def test_the_old_setting_is_refused_rather_than_silently_ignored():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "TRUST_X_FORWARDED_PROTO": "1"},
        timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode != 0
    assert "TRUSTED_PROXIES" in result.stderr
