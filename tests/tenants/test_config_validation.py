from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from models_mgmt.services import model_register
from tenants import services
from tenants.models import Tenant
from tenants.quotas import TenantConfig, validate_tenant_config

BAD_VALUES = [
    ("max_concurrent_requests", 0, "Max concurrent requests must be at least 1."),
    ("max_concurrent_requests", -3, "Max concurrent requests must be at least 1."),
    ("max_concurrent_requests", "4", "Max concurrent requests must be a whole number."),
    ("max_tokens_per_minute", 0, "Max tokens per minute must be at least 1."),
    ("max_requests_per_minute", 0, "Max requests per minute must be at least 1."),
    ("model_allow_list", ["llama", ""], "Model allow list contains a blank model id."),
    ("model_allow_list", ["llama", "   "], "Model allow list contains a blank model id."),
    ("model_allow_list", ["llama", "llama"], "Model allow list names 'llama' twice."),
    ("model_allow_list", "llama", "Model allow list must be a list of model ids."),
    ("monthly_budget", Decimal("-0.01"), "Monthly budget cannot be negative."),
    ("monthly_budget", Decimal("1.005"), "Monthly budget can have at most 2 decimal places."),
    ("monthly_budget", Decimal("NaN"), "Monthly budget must be a decimal amount."),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_VALUES)
def test_each_bad_value_is_refused_with_a_message_naming_its_field(field, value, message):
    with pytest.raises(ValidationError) as caught:
        validate_tenant_config(TenantConfig(**{field: value}))

    assert caught.value.message_dict == {field: [message]}


def test_good_config_passes_and_empty_allow_list_allows_every_model():
    config = TenantConfig(
        max_concurrent_requests=1,
        max_tokens_per_minute=1,
        max_requests_per_minute=1,
        model_allow_list=[],
        monthly_budget=Decimal("0"),
    )

    validate_tenant_config(config)

    assert config.model_allowed("anything")
    assert TenantConfig(model_allow_list=["a"]).model_allowed("a")
    assert not TenantConfig(model_allow_list=["a"]).model_allowed("b")


def test_several_bad_fields_are_all_reported():
    with pytest.raises(ValidationError) as caught:
        validate_tenant_config(TenantConfig(max_concurrent_requests=0, max_tokens_per_minute=0))

    assert set(caught.value.message_dict) == {"max_concurrent_requests", "max_tokens_per_minute"}


@pytest.mark.parametrize(("field", "value", "message"), BAD_VALUES[:2] + BAD_VALUES[5:8])
def test_services_refuse_bad_config_and_store_nothing(db, field, value, message):
    with pytest.raises(ValidationError) as caught:
        services.tenant_register(slug="bad", **{field: value})

    assert caught.value.message_dict[field] == [message]
    assert not Tenant.objects.filter(slug="bad").exists()


def test_update_with_bad_value_leaves_the_row_unchanged(acme):
    with pytest.raises(ValidationError):
        services.tenant_update(tenant=acme, max_tokens_per_minute=0)

    acme.refresh_from_db()
    assert acme.max_tokens_per_minute == 100_000


def test_slug_must_be_url_safe_and_unique(acme):
    with pytest.raises(ValidationError) as caught:
        services.tenant_register(slug="not a slug")
    assert "slug" in caught.value.message_dict

    with pytest.raises(ValidationError) as caught:
        services.tenant_register(slug="acme")
    assert "slug" in caught.value.message_dict
    assert Tenant.objects.count() == 1


def test_allow_list_must_name_models_in_the_catalog(db):
    model_register(model_id="llama", engine="openai", base_url="http://127.0.0.1:9/v1")
    validate_tenant_config(TenantConfig(model_allow_list=["llama"]))

    with pytest.raises(ValidationError) as caught:
        validate_tenant_config(TenantConfig(model_allow_list=["llama", "gpt-9", "claude"]))

    assert caught.value.message_dict == {
        "model_allow_list": ["Unknown model id(s) in the allow list: claude, gpt-9."]
    }
