"""`credits` and `tenant --prepaid` as scripts use them: exit codes, one-line errors, listings."""

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

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


def test_bad_input_is_one_line_and_a_non_zero_exit(manage, acme):
    negative = manage("credits", "grant", "acme", "--amount", "-5", "--reason", "x")
    unknown = manage("credits", "balance", "nope")

    assert "amount: Amount must be more than 0." in one_line_error(negative)
    assert "no tenant with slug 'nope'" in one_line_error(unknown)
    assert not CreditEntry.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["acme", "--amount", "lots", "--reason", "x"], "invalid decimal amount value: 'lots'"),
        (["nope", "--amount", "5", "--reason", "x"], "no tenant with slug 'nope'"),
        (["acme", "--amount", "5", "--reason", "x", "--expires", "2020-01-31"],
         "expires: The expiry is in the past."),
        (["acme", "--amount", "5", "--reason", "x", "--expires", "31/01/2030"],
         "invalid date (YYYY-MM-DD) value"),
        (["acme", "--amount", "5", "--reason", " "], "reason: A grant needs a reason."),
        (["acme", "--amount", "5.001", "--reason", "x"], "at most 2 decimal places"),
        (["acme", "--amount", "5"], "the following arguments are required: --reason"),
    ],
)  # fmt: skip
def test_grant_refuses_bad_input_and_writes_nothing(acme, args, expected):
    # In-process, the same parser and validation as the script above: refused as a CommandError.
    with pytest.raises(CommandError) as refused:
        call_command("credits", "grant", *args)

    assert expected in str(refused.value)
    assert not CreditEntry.objects.exists()


@pytest.mark.django_db
def test_tenant_prepaid_option(acme):
    out = io.StringIO()
    call_command("tenant", "create", "initech", "--prepaid", stdout=out)
    assert Tenant.objects.get(slug="initech").prepaid is True

    call_command("tenant", "update", "initech", "--no-prepaid", stdout=out)
    call_command("tenant", "update", "acme", "--prepaid", stdout=out)
    listing = io.StringIO()
    call_command("tenant", "list", stdout=listing)

    assert dict(Tenant.objects.values_list("slug", "prepaid")) == {"initech": False, "acme": True}
    header, *rows = listing.getvalue().splitlines()
    column = header.split().index("PREPAID")
    assert {row.split()[0]: row.split()[column] for row in rows} == {"acme": "yes", "initech": "no"}
