"""The operator: a staff superuser signed in to the admin, and a priced model with usage."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from billing.pricing import price_set

OPERATOR_PASSWORD = "pw-operator-123"


@pytest.fixture
def operator(db):
    return get_user_model().objects.create_superuser("op", "op@example.com", OPERATOR_PASSWORD)


@pytest.fixture
def admin_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def llama_price(db):
    """28,000 per million tokens in and out: a default test event (1,000 + 500 tokens) costs
    exactly 42.00."""
    return price_set(
        model_id="llama",
        input_per_million=Decimal(28_000),
        output_per_million=Decimal(28_000),
        effective_from=datetime.now(tz=UTC) - timedelta(days=400),
    )
