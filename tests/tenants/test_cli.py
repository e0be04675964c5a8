"""The CLI contract as scripts use it: real `manage.py` processes, exit codes, stdout, stderr."""

from decimal import Decimal

import pytest

from models_mgmt.services import model_register
from tenants import apikeys, services
from tenants.models import ApiKey, Tenant


def one_line_error(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def catalog(transactional_db):
    for model_id in ("llama-3", "qwen", "m1"):
        model_register(model_id=model_id, engine="openai", base_url="http://127.0.0.1:9/v1")


def test_tenant_create_with_every_option(manage, catalog):
    result = manage(
        "tenant", "create", "acme", "--name", "Acme Corp", "--max-concurrent", "3",
        "--tpm", "5000", "--rpm", "60", "--allow", "llama-3", "--allow", "qwen",
        "--budget", "250.50",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    tenant = Tenant.objects.get(slug="acme")
    assert tenant.name == "Acme Corp"
    assert tenant.max_concurrent_requests == 3
    assert tenant.max_tokens_per_minute == 5000
    assert tenant.max_requests_per_minute == 60
    assert tenant.model_allow_list == ["llama-3", "qwen"]
    assert tenant.monthly_budget == Decimal("250.50")


def test_tenant_create_uses_documented_defaults(manage):
    assert manage("tenant", "create", "plain").returncode == 0

    tenant = Tenant.objects.get(slug="plain")
    assert (tenant.name, tenant.max_concurrent_requests, tenant.max_tokens_per_minute) == (
        "plain",
        8,
        100_000,
    )
    assert tenant.max_requests_per_minute is None
    assert tenant.model_allow_list == []
    assert tenant.monthly_budget is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-concurrent", "0"], "max_concurrent_requests: Max concurrent requests must be"),
        (["--tpm", "-5"], "max_tokens_per_minute: Max tokens per minute must be at least 1"),
        (["--allow", "a", "--allow", "a"], "model_allow_list: Model allow list names 'a' twice"),
        (["--allow", ""], "model_allow_list: Model allow list contains a blank model id"),
        (["--allow", "gpt-9"], "Unknown model id(s) in the allow list: gpt-9"),
        (["--budget", "-1"], "monthly_budget: Monthly budget cannot be negative"),
        (["--budget", "lots"], "invalid decimal amount value: 'lots'"),
        (["--tpm", "many"], "invalid int value: 'many'"),
    ],
)
def test_tenant_create_bad_input_is_one_line_and_creates_nothing(manage, args, expected):
    result = manage("tenant", "create", "bad", *args)

    assert expected in one_line_error(result)
    assert not Tenant.objects.filter(slug="bad").exists()


def test_duplicate_slug_is_refused(manage, acme):
    result = manage("tenant", "create", "acme")

    assert "already exists" in one_line_error(result)
    assert Tenant.objects.count() == 1


def test_tenant_update_suspend_resume_and_list(manage, acme, catalog):
    assert manage("tenant", "update", "acme", "--tpm", "777", "--allow", "m1").returncode == 0
    acme.refresh_from_db()
    assert (acme.max_tokens_per_minute, acme.model_allow_list) == (777, ["m1"])

    assert manage("tenant", "update", "acme", "--allow-all", "--budget", "9").returncode == 0
    acme.refresh_from_db()
    assert (acme.model_allow_list, acme.monthly_budget) == ([], Decimal("9"))

    assert manage("tenant", "suspend", "acme").returncode == 0
    acme.refresh_from_db()
    assert acme.status == Tenant.Status.SUSPENDED
    listing = manage("tenant", "list").stdout.splitlines()
    assert listing[0].split()[:2] == ["SLUG", "STATUS"]
    assert listing[1].split()[:4] == ["acme", "suspended", "4", "777"]

    assert manage("tenant", "resume", "acme").returncode == 0
    acme.refresh_from_db()
    assert acme.status == Tenant.Status.ACTIVE


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tenant", "update", "nope", "--tpm", "5"], "no tenant with slug 'nope'"),
        (["tenant", "update", "acme"], "nothing to update"),
        (["tenant", "update", "acme", "--max-concurrent", "0"], "must be at least 1"),
        (["tenant", "suspend", "nope"], "no tenant with slug 'nope'"),
        (["tenant", "frobnicate"], "invalid choice: 'frobnicate'"),
        (["apikey", "create", "nope"], "no tenant with slug 'nope'"),
        (["apikey", "create", "acme", "--expires-days", "0"], "--expires-days must be at least"),
        (["apikey", "revoke", "sk-00000000"], "no API key with prefix 'sk-00000000'"),
        (["apikey", "list", "nope"], "no tenant with slug 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(manage, acme, args, expected):
    result = manage(*args)

    assert expected in one_line_error(result)
    acme.refresh_from_db()
    assert acme.max_concurrent_requests == 4
    assert not ApiKey.objects.exists()


def test_apikey_create_prints_the_key_alone_on_the_last_line(manage, acme):
    result = manage("apikey", "create", "acme", "--name", "deploy", "--expires-days", "30")

    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    prefix = apikeys.parse_key(key)
    api_key = ApiKey.objects.get()
    assert api_key.prefix == prefix
    assert api_key.name == "deploy"
    assert api_key.expires_at is not None
    assert services.tenant_for_key(key).tenant == acme


def test_apikey_list_shows_prefixes_never_secrets_and_revoke_by_prefix(manage, acme, acme_key):
    listing = manage("apikey", "list", "acme")

    assert listing.returncode == 0
    assert acme_key.api_key.display_prefix in listing.stdout
    assert acme_key.plaintext not in listing.stdout
    assert acme_key.plaintext[11:20] not in listing.stdout

    result = manage("apikey", "revoke", acme_key.api_key.display_prefix)

    assert result.returncode == 0
    acme_key.api_key.refresh_from_db()
    assert acme_key.api_key.state == ApiKey.State.REVOKED
    assert "revoked" in manage("apikey", "list", "acme").stdout


def test_apikey_rotate_prints_the_new_key_last(manage, acme, acme_key):
    result = manage("apikey", "rotate", acme_key.api_key.prefix, "--grace-hours", "1")

    assert result.returncode == 0, result.stderr
    new_key = result.stdout.strip().splitlines()[-1]
    assert services.tenant_for_key(new_key).tenant == acme
    assert services.tenant_for_key(acme_key.plaintext).tenant == acme
    acme_key.api_key.refresh_from_db()
    assert acme_key.api_key.replaced_by.prefix == apikeys.parse_key(new_key)
