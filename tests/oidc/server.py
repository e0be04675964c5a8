"""The single sign-on set-up: node's oidc-provider (tests/oidc/provider.mjs) on loopback with a
client for us, and the server under test configured to use it (OIDC_ISSUER ...). The provider's
users live in a JSON file the tests rewrite between sign-ins (`SsoSite.set_users`)."""

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.gateway_server import gateway_env
from tests.servers import ROOT, free_port, gateway_command, running

CLIENT_ID = "inference-platform"
CLIENT_SECRET = "test-only-oidc-client-secret"
STAFF_GROUP = "platform-staff"


@dataclass
class SsoSite:
    url: str  # the server under test
    issuer: str
    users_file: Path
    log_path: Path

    def set_users(self, users: dict[str, dict]) -> None:
        """{"login": {"email": ..., "groups": [...]}}: who the provider knows, from now on."""
        self.users_file.write_text(json.dumps(users))


@contextmanager
def sso_site(folder: Path) -> Iterator[SsoSite]:
    node = shutil.which("node")
    assert node, "node is needed for the test OpenID provider (make test installs npm packages)"
    provider_port, server_port = free_port(), free_port()
    # The provider under another host name than the server's, as in production: their
    # cookies stay apart.
    issuer = f"http://localhost:{provider_port}"
    server_url = f"http://127.0.0.1:{server_port}"
    users_file = folder / "oidc-users.json"
    users_file.write_text("{}")
    provider_env = gateway_env(
        OIDC_TEST_ISSUER=issuer,
        OIDC_TEST_PORT=str(provider_port),
        OIDC_TEST_USERS=str(users_file),
        OIDC_TEST_CLIENT_ID=CLIENT_ID,
        OIDC_TEST_CLIENT_SECRET=CLIENT_SECRET,
        OIDC_TEST_REDIRECT_URI=f"{server_url}/portal/sso/callback/",
        OIDC_TEST_POST_LOGOUT_URI=f"{server_url}/portal/login/",
    )
    server_env = gateway_env(
        OIDC_ISSUER=issuer,
        OIDC_CLIENT_ID=CLIENT_ID,
        OIDC_CLIENT_SECRET=CLIENT_SECRET,
        OIDC_STAFF_GROUP=STAFF_GROUP,
        SITE_URL=server_url,
    )
    provider_log, server_log = folder / "provider.log", folder / "server.log"
    provider = [node, str(ROOT / "tests" / "oidc" / "provider.mjs")]
    with (
        running(provider, ready_url=f"{issuer}/.well-known/openid-configuration",
                env=provider_env, log=provider_log),
        running(gateway_command(server_port, workers=1), ready_url=f"{server_url}/healthz",
                env=server_env, log=server_log),
    ):  # fmt: skip
        yield SsoSite(url=server_url, issuer=issuer, users_file=users_file, log_path=server_log)
