"""The fair queue's options on the CLI: tenant --weight and --max-queued, apikey --priority
(create and update), models register --max-concurrent-per-replica; bad values are one line."""

import pytest

from models_mgmt.models import ServedModel
from tenants.models import ApiKey, Tenant
from tests.tenants.test_cli import one_line_error


def test_tenant_weight_and_max_queued_on_create_and_update(manage, transactional_db):
    created = manage("tenant", "create", "acme", "--weight", "3", "--max-queued", "7")
    defaults = manage("tenant", "create", "globex")

    assert created.returncode == 0, created.stderr
    assert defaults.returncode == 0, defaults.stderr
    acme = Tenant.objects.get(slug="acme")
    assert (acme.queue_weight, acme.max_queued_requests) == (3, 7)
    globex = Tenant.objects.get(slug="globex")
    assert (globex.queue_weight, globex.max_queued_requests) == (1, None)
    assert globex.config.queue_bound == globex.max_concurrent_requests  # the default bound

    updated = manage("tenant", "update", "acme", "--weight", "2")

    assert updated.returncode == 0, updated.stderr
    acme.refresh_from_db()
    assert (acme.queue_weight, acme.max_queued_requests) == (2, 7)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--weight", "0"], "Weight must be at least 1"),
        (["--weight", "5000"], "Weight must be at most 1000"),
        (["--max-queued", "0"], "Max queued requests must be at least 1"),
    ],
)
def test_bad_queue_quotas_are_one_line_and_change_nothing(manage, acme, args, expected):
    assert expected in one_line_error(manage("tenant", "update", "acme", *args))
    acme.refresh_from_db()
    assert (acme.queue_weight, acme.max_queued_requests) == (1, None)


def test_apikey_priority_on_create_and_update(manage, acme):
    created = manage("apikey", "create", "acme", "--priority", "high")
    plain = manage("apikey", "create", "acme")

    assert created.returncode == 0, created.stderr
    high, normal = ApiKey.objects.order_by("created_at")
    assert (high.priority, normal.priority) == ("high", "normal")

    updated = manage("apikey", "update", normal.display_prefix, "--priority", "low")

    assert updated.returncode == 0, updated.stderr
    normal.refresh_from_db()
    assert normal.priority == "low"
    assert "low" in manage("apikey", "list", "acme").stdout
    assert plain.returncode == 0
    assert "invalid choice: 'urgent'" in one_line_error(
        manage("apikey", "update", normal.display_prefix, "--priority", "urgent")
    )
    assert "nothing to update" in one_line_error(manage("apikey", "update", normal.prefix))
    normal.refresh_from_db()
    assert normal.priority == "low"


def test_models_register_max_concurrent_per_replica(manage, transactional_db):
    set_ = manage("models", "register", "m", "--engine", "local",
                  "--max-concurrent-per-replica", "4")  # fmt: skip
    unset = manage("models", "register", "n", "--engine", "local")
    bad = manage("models", "register", "o", "--engine", "local",
                 "--max-concurrent-per-replica", "0")  # fmt: skip

    assert set_.returncode == 0, set_.stderr
    assert unset.returncode == 0, unset.stderr
    assert ServedModel.objects.get(model_id="m").max_concurrent_per_replica == 4
    assert ServedModel.objects.get(model_id="n").max_concurrent_per_replica is None
    assert "greater than or equal to 1" in one_line_error(bad)
    assert not ServedModel.objects.filter(model_id="o").exists()
