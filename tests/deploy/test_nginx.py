"""deploy/nginx.conf: `nginx -t` passes on the example (with a certificate of its own in place of
the example's paths), and nginx run from it in front of a gateway with the matching settings
(HTTPS=1, TRUSTED_PROXIES=127.0.0.1) ends TLS, moves plain HTTP to HTTPS but for the health
checks, keeps /metrics in, and overwrites X-Forwarded-For: a client cannot name another address."""

import subprocess
from pathlib import Path

import httpx
import pytest
from axes.models import AccessAttempt

from tests.conftest import ROOT
from tests.deploy.tools import tool
from tests.gateway_server import gateway_env
from tests.servers import free_port, gateway_command, running

EXAMPLE = ROOT / "deploy" / "nginx.conf"
HOST = "api.example.com"
CERTIFICATE = "/etc/letsencrypt/live/api.example.com/fullchain.pem"
KEY = "/etc/letsencrypt/live/api.example.com/privkey.pem"


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            tool("openssl"),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={HOST}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _config(folder: Path, **replace: str) -> Path:
    cert, key = _certificate(folder)
    text = EXAMPLE.read_text().replace(CERTIFICATE, str(cert)).replace(KEY, str(key))
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "nginx.conf"
    path.write_text(text)
    return path


def test_nginx_accepts_the_example(tmp_path):
    config = _config(tmp_path)

    result = subprocess.run(
        [tool("nginx"), "-t", "-c", str(config), "-e", str(tmp_path / "e.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
    assert "[warn]" not in result.stderr


@pytest.fixture
def proxied(transactional_db, tmp_path):
    """A gateway with the production settings behind nginx from the example (on free loopback
    ports): yields (http URL, https URL)."""
    gateway_port, http_port, https_port = free_port(), free_port(), free_port()
    config = _config(
        tmp_path,
        **{
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "listen [::]:80;": "",
            "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
            "listen [::]:443 ssl;": "",
            "server 127.0.0.1:8000;": f"server 127.0.0.1:{gateway_port};",
            "pid /run/nginx.pid;": f"pid {tmp_path / 'nginx.pid'};",
            "/var/log/nginx/": f"{tmp_path}/",
        },
    )
    env = gateway_env(
        HTTPS="1",
        TRUSTED_PROXIES="127.0.0.1",
        ALLOWED_HOSTS=HOST,
        CSRF_TRUSTED_ORIGINS=f"https://{HOST}",
    )
    nginx = [tool("nginx"), "-c", str(config), "-e", str(tmp_path / "e.log"), "-g", "daemon off;"]
    with (
        running(
            gateway_command(gateway_port, workers=1),
            env=env,
            log=tmp_path / "gw.log",
            ready_url=f"http://127.0.0.1:{gateway_port}/healthz",
        ),
        running(nginx, log=tmp_path / "nginx.out", ready_url=f"http://127.0.0.1:{http_port}/"),
    ):
        yield f"http://127.0.0.1:{http_port}", f"https://127.0.0.1:{https_port}"


def test_nginx_from_the_example_ends_tls_and_passes_the_clients_address(proxied):
    http_url, https_url = proxied
    host = {"Host": HOST}
    spoofed = {"Host": HOST, "X-Forwarded-For": "203.0.113.9"}

    with httpx.Client(verify=False, timeout=30) as client:  # noqa: S501 - its own certificate
        plain = client.get(f"{http_url}/portal/login/", headers=host)
        probes = [
            client.get(f"{http_url}/{path}", headers=host).status_code
            for path in ("healthz", "readyz")
        ]
        page = client.get(f"{https_url}/portal/login/", headers=spoofed)
        metrics = client.get(f"{https_url}/metrics", headers=host)
        signed_in = client.post(
            f"{https_url}/portal/login/",
            headers={**spoofed, "Referer": f"https://{HOST}/"},
            data={
                "username": "nobody",
                "password": "wrong",
                "csrfmiddlewaretoken": page.cookies["csrftoken"],
            },
        )

    assert plain.status_code == 301
    assert plain.headers["location"] == f"https://{HOST}/portal/login/"
    assert probes == [200, 200]  # load balancers probe over plain HTTP
    assert page.status_code == 200  # no redirect: Django saw HTTPS in X-Forwarded-Proto
    assert "max-age=" in page.headers["strict-transport-security"]
    assert "Secure" in page.headers["set-cookie"]
    assert metrics.status_code == 403
    assert signed_in.status_code == 200  # the form again, with its error
    (attempt,) = AccessAttempt.objects.all()  # the failed sign-in, as django-axes saw it
    assert attempt.ip_address == "127.0.0.1"  # the client's address, not the one it claimed
