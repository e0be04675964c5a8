"""A key's own limits through the CLI (`apikey create/update/list`) and the one validation
the CLI, the admin and the portal share: each limit at most its tenant's."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from billing.pricing import price_set
from models_mgmt.services import model_register
from tenants import services
from tenants.models import ApiKey
from tenants.quotas import KeyLimits, validate_key_limits
from tests.billing.factories import event, store
from tests.tenants.test_cli import one_line_error


@pytest.fixture
def acme(transactional_db):
    for model_id in ("llama-3", "qwen", "m1"):
        model_register(model_id=model_id, engine="openai", base_url="http://127.0.0.1:9/v1")
    return services.tenant_register(
        slug="acme",
        max_concurrent_requests=8,
        max_tokens_per_minute=10_000,
        max_requests_per_minute=100,
        monthly_budget=Decimal(50),
        model_allow_list=["llama-3", "qwen"],
    )


def test_create_with_every_limit_then_update_and_list(manage, acme):
    created = manage(
        "apikey",
        "create",
        "acme",
        "--name",
        "ci",
        "--max-concurrent",
        "2",
        "--tpm",
        "500",
        "--rpm",
        "10",
        "--budget",
        "5.25",
        "--allow",
        "qwen",
    )
    assert created.returncode == 0, created.stderr
    key = ApiKey.objects.get(tenant=acme)
    assert (
        key.max_concurrent_requests,
        key.max_tokens_per_minute,
        key.max_requests_per_minute,
        key.monthly_budget,
        key.model_allow_list,
    ) == (2, 500, 10, Decimal("5.25"), ["qwen"])

    updated = manage(
        "apikey",
        "update",
        key.display_prefix,
        "--rpm",
        "0",
        "--no-budget",
        "--allow-all",
        "--tpm",
        "800",
    )
    assert updated.returncode == 0, updated.stderr
    key.refresh_from_db()
    assert (key.max_requests_per_minute, key.monthly_budget, key.model_allow_list) == (
        None,
        None,
        [],
    )
    assert key.max_tokens_per_minute == 800
    assert "concurrent=2 tpm=800" in updated.stdout

    price_set(
        model_id="qwen",
        input_per_million=Decimal(1000),
        output_per_million=Decimal(0),
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )
    store(event(acme, model="qwen", api_key_prefix=key.display_prefix))  # 1000 tokens: 1.00
    listed = manage("apikey", "list", "acme")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert "LIMITS" in header
    assert "SPENT THIS MONTH" in header
    assert "concurrent=2 tpm=800" in row
    assert row.rstrip().endswith("1.00")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--max-concurrent", "9"],
            "Max concurrent requests of a key (9) cannot be above its tenant's (8).",
        ),
        (["--tpm", "10001"], "Max tokens per minute of a key (10001) cannot be above"),
        (["--rpm", "101"], "Max requests per minute of a key (101) cannot be above"),
        (["--budget", "50.01"], "Monthly budget of a key (50.01) cannot be above its tenant's"),
        (["--budget", "1.005"], "Monthly budget can have at most 2 decimal places."),
        (["--allow", "m1"], "The tenant may not use: m1 (a key can only narrow it)."),
        (["--allow", "nope"], "Unknown model id(s) in the allow list: nope."),
        (["--max-concurrent", "0"], "Max concurrent requests must be at least 1."),
    ],
)
def test_a_limit_the_tenant_does_not_allow_is_refused(acme, options, message):
    """In process, for speed: the script's one-line error is checked once, below."""
    with pytest.raises(CommandError) as caught:
        call_command("apikey", "create", "acme", *options)

    assert message in str(caught.value)
    assert not ApiKey.objects.filter(tenant=acme).exists()


def test_a_refused_limit_is_one_line_and_a_non_zero_exit_from_a_script(manage, acme):
    result = manage("apikey", "create", "acme", "--max-concurrent", "9")

    assert "cannot be above its tenant's (8)" in one_line_error(result)


def test_update_refuses_contradictions_and_nothing(acme):
    key = services.apikey_issue(tenant=acme, name="k").api_key

    refused = {}
    for name, options in {"both": ["--budget", "1", "--no-budget"], "nothing": [],
                          "above": ["--tpm", "20000"]}.items():  # fmt: skip
        with pytest.raises(CommandError) as caught:
            call_command("apikey", "update", key.display_prefix, *options)
        refused[name] = str(caught.value)

    assert "--no-budget and --budget contradict each other" in refused["both"]
    assert "nothing to update" in refused["nothing"]
    assert "cannot be above its tenant's (10000)" in refused["above"]
    key.refresh_from_db()
    assert key.max_tokens_per_minute is None


def test_a_rotated_key_keeps_its_limits(acme):
    old = services.apikey_issue(tenant=acme, limits=KeyLimits(max_concurrent_requests=3)).api_key

    new = services.apikey_rotate(api_key=old).api_key

    assert new.max_concurrent_requests == 3


def test_a_tenant_without_a_limit_lets_a_key_have_one():
    open_tenant = services.TenantConfig()  # no rpm limit, no budget, every model

    validate_key_limits(
        KeyLimits(max_requests_per_minute=5, monthly_budget=Decimal(1)), open_tenant
    )
    with pytest.raises(ValidationError) as caught:
        validate_key_limits(KeyLimits(max_requests_per_minute=-1), open_tenant)
    assert caught.value.message_dict == {
        "max_requests_per_minute": ["Max requests per minute must be at least 1."]
    }
