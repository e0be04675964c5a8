"""`credits` and `tenant --prepaid` as scripts use them: exit codes, one-line errors, listings."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing import credits
from billing.models import CreditEntry
from billing.pricing import price_set
from tenants.models import Tenant
from tests.billing.factories import event, store
from tests.billing.test_billing_cli import one_line_error


def test_grant_balance_and_list(manage, acme):
    price_set(model_id="llama", input_per_million=Decimal(1000), output_per_million=Decimal(0),
              effective_from=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    expires = (datetime.now(tz=UTC).date() + timedelta(days=30)).isoformat()

    granted = manage("credits", "grant", "acme", "--amount", "12.50", "--reason", "prepaid Q1",
                     "--expires", expires)  # fmt: skip
    store(event(acme))  # 1.00 of usage drawn from it
    balance = manage("credits", "balance", "acme")
    listing = manage("credits", "list", "acme")

    assert granted.returncode == 0, granted.stderr
    assert "granted 12.50 USD to acme" in granted.stdout
    grant = CreditEntry.objects.get(kind=CreditEntry.Kind.GRANT)
    assert (grant.amount, grant.reason) == (Decimal("12.50"), "prepaid Q1")
    assert grant.actor.startswith("cli:")
    assert balance.returncode == 0, balance.stderr
    header, values = balance.stdout.splitlines()
    assert header.split() == ["GRANTED", "DRAWN", "LAPSED", "BALANCE", "CURRENCY"]
    assert values.split() == ["12.50", "1.00", "0.00", "11.50", "USD"]
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "KIND", "AMOUNT"]
    assert [line.split()[1] for line in lines[1:]] == ["draw", "grant"]  # newest first
    assert "prepaid Q1" in listing.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["acme", "--amount", "-5", "--reason", "x"], "amount: Amount must be more than 0."),
        (["acme", "--amount", "lots", "--reason", "x"], "invalid decimal amount value: 'lots'"),
        (["nope", "--amount", "5", "--reason", "x"], "no tenant with slug 'nope'"),
        (["acme", "--amount", "5", "--reason", "x", "--expires", "2020-01-31"],
         "expires: The expiry is in the past."),
        (["acme", "--amount", "5", "--reason", "x", "--expires", "31/01/2030"],
         "invalid date (YYYY-MM-DD) value"),
        (["acme", "--amount", "5", "--reason", " "], "reason: A grant needs a reason."),
        (["acme", "--amount", "5"], "the following arguments are required: --reason"),
    ],
)  # fmt: skip
def test_grant_bad_input_is_one_line_and_writes_nothing(manage, acme, args, expected):
    assert expected in one_line_error(manage("credits", "grant", *args))
    assert not CreditEntry.objects.exists()


def test_balance_of_an_unknown_tenant(manage, acme):
    assert "no tenant with slug 'nope'" in one_line_error(manage("credits", "balance", "nope"))


def test_tenant_prepaid_option(manage, acme):
    created = manage("tenant", "create", "initech", "--prepaid")
    assert created.returncode == 0, created.stderr
    assert Tenant.objects.get(slug="initech").prepaid is True

    assert manage("tenant", "update", "initech", "--no-prepaid").returncode == 0
    assert manage("tenant", "update", "acme", "--prepaid").returncode == 0

    assert dict(Tenant.objects.values_list("slug", "prepaid")) == {"initech": False, "acme": True}
    listing = manage("tenant", "list").stdout.splitlines()
    assert "PREPAID" in listing[0].split()
    assert credits.credits_balance(Tenant.objects.get(slug="acme")).balance == 0
