"""Both OpenAPI documents against the real gateway (Schemathesis): whatever the documents allow
(and, for the inference API, bodies that break them), the gateway never answers 500 and its
answers conform: documented status, content type and schema."""

import json
import zlib
from pathlib import Path

import httpx
import pytest
import schemathesis
import yaml
from django.conf import settings as django_settings
from hypothesis import HealthCheck, settings

from gateway.parsing import MAX_N
from tenants import services
from tenants.models import ApiKey
from tests.gateway_server import make_customer

ROOT = Path(__file__).resolve().parents[2]
INFERENCE_DOC = ROOT / "gateway" / "openapi.yaml"
EXAMPLES = 25
inference_schema = schemathesis.openapi.from_path(INFERENCE_DOC)


def _management_document() -> dict:
    # Generated here as /api/schema serves it (a test below checks they are the same).
    from drf_spectacular.generators import SchemaGenerator

    return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True)))


management_schema = schemathesis.openapi.from_dict(_management_document())
# OpenAPI 3.0 cannot state every rule the servers apply (stream_options only with stream; a text
# part needs its text; usage.csv's start and end come together; end after start; a served model
# id), so a document-valid request may still get a 400/404. Every other check runs: no 500, and
# status, content type, headers and body as documented, and invalid bodies refused.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
# Served models for the fuzzed bodies to name now and then, so that some reach an engine.
ENGINE_MODELS = {"/v1/embeddings": "e5", "/v1/chat/completions": "fake", "/v1/completions": "fake"}


@pytest.fixture
def fuzz_customer(gateway, catalog):
    # Limits out of the way: the fuzzing is about bodies, not about being rate limited.
    return make_customer(gateway, slug="fuzz", max_tokens_per_minute=10**9,
                         max_concurrent_requests=64)  # fmt: skip


def _aim_at_a_served_model(case) -> None:
    """Half the valid bodies (chosen by their content, so runs repeat) name a served model."""
    body = case.body
    model = ENGINE_MODELS.get(case.path)
    if case.meta.generation.mode != schemathesis.GenerationMode.POSITIVE:
        return  # a body meant to break the document stays broken
    if not (model and isinstance(body, dict) and "model" in body):
        return
    if zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode()) % 2:
        body["model"] = model


@inference_schema.parametrize()
@FUZZ_SETTINGS
def test_the_inference_api_conforms_to_its_document(case, fuzz_customer, gateway):
    _aim_at_a_served_model(case)
    case.call_and_validate(base_url=gateway.url, timeout=30, excluded_checks=EXCLUDED,
                           headers={"Authorization": f"Bearer {fuzz_customer.key}"})  # fmt: skip


@pytest.fixture
def fuzz_manage_key(fuzz_customer):
    return services.apikey_issue(tenant=fuzz_customer.tenant, scope=ApiKey.Scope.MANAGE).plaintext


@management_schema.parametrize()
@FUZZ_SETTINGS
def test_the_management_api_conforms_to_its_schema(case, fuzz_customer, fuzz_manage_key, gateway):
    # /api/keys takes a key of scope manage (the inference key's 403 is tested elsewhere).
    key = fuzz_manage_key if case.path.startswith("/api/keys") else fuzz_customer.key
    case.call_and_validate(base_url=gateway.url, timeout=30, excluded_checks=EXCLUDED,
                           headers={"Authorization": f"Bearer {key}"})  # fmt: skip


def test_the_management_schema_is_served_and_documents_the_bearer_key(gateway):
    response = httpx.get(f"{gateway.url}/api/schema?format=json")

    assert response.status_code == 200
    document = response.json()
    assert document == _management_document()
    assert set(document["paths"]) == {
        "/api/invoices", "/api/invoices/{period}.{fmt}", "/api/usage.csv", "/api/keys",
        "/api/keys/{prefix}", "/api/keys/{prefix}/revoke", "/api/keys/{prefix}/rotate",
    }  # fmt: skip
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_the_inference_document_states_the_limits_the_parser_enforces():
    document = yaml.safe_load(INFERENCE_DOC.read_text())
    options = document["components"]["schemas"]["GenerationOptions"]["properties"]

    assert options["max_tokens"]["maximum"] == django_settings.MAX_TOKENS_LIMIT
    assert options["max_completion_tokens"]["maximum"] == django_settings.MAX_TOKENS_LIMIT
    assert options["n"]["maximum"] == MAX_N
    assert set(document["paths"]) == {
        "/v1/models", "/v1/models/{model}", "/v1/chat/completions", "/v1/completions",
        "/v1/embeddings",
    }  # fmt: skip
