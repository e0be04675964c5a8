import getpass
from datetime import date
from decimal import Decimal

from django.conf import settings

from billing import credits, money
from saas_platform.cli import ScriptableCommand, decimal_amount, first_or_fail, format_table
from tenants.models import Tenant


def _day(value: str) -> date:
    return date.fromisoformat(value)


_day.__name__ = "date (YYYY-MM-DD)"


def _tenant(slug: str) -> Tenant:
    return first_or_fail(Tenant.objects.filter(slug=slug), f"no tenant with slug {slug!r}")


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container running as an unnamed uid)
        return "unknown"


def _moment(value) -> str:
    return value.strftime("%Y-%m-%dT%H:%MZ") if value else "-"


class Command(ScriptableCommand):
    help = "Grant prepaid credits to a tenant, show its balance and its credit ledger."

    def add_arguments(self, parser):
        actions = self.add_actions(parser)
        grant = actions.add_parser("grant", help="grant credits (in BILLING_CURRENCY)")
        grant.add_argument("slug")
        grant.add_argument("--amount", type=decimal_amount, required=True, metavar="X")
        grant.add_argument("--reason", required=True, metavar="TEXT")
        grant.add_argument(
            "--expires",
            type=_day,
            metavar="YYYY-MM-DD",
            help="valid through that day, UTC (default: no expiry)",
        )
        actions.add_parser("balance", help="the tenant's credit balance").add_argument("slug")
        actions.add_parser("list", help="the tenant's credit ledger").add_argument("slug")

    def handle_grant(self, options):
        tenant = _tenant(options["slug"])
        grant = credits.credits_grant(
            tenant=tenant,
            amount=options["amount"],
            reason=options["reason"],
            expires=options["expires"],
            actor=f"cli:{_who()}",
        )
        until = f", expires {_moment(grant.expires_at)}" if grant.expires_at else ""
        balance = credits.credits_balance(tenant)
        self.stdout.write(
            f"granted {money_text(grant.amount)} {settings.BILLING_CURRENCY} to {tenant.slug}"
            f"{until}; balance {money_text(balance.balance)}"
        )

    def handle_balance(self, options):
        balance = credits.credits_balance(_tenant(options["slug"]))
        rows = [("GRANTED", "DRAWN", "LAPSED", "BALANCE", "CURRENCY")]
        rows.append(
            (
                money_text(balance.granted),
                money_text(balance.drawn),
                money_text(balance.lapsed),
                money_text(balance.balance),
                balance.currency,
            )
        )
        for line in format_table(rows):
            self.stdout.write(line)

    def handle_list(self, options):
        rows = [("ID", "KIND", "AMOUNT", "GRANT", "EXPIRES", "PERIOD", "WHEN", "BY", "REASON")]
        for entry in credits.credit_entries(_tenant(options["slug"])):
            rows.append(
                (
                    str(entry.pk),
                    entry.kind,
                    money_text(entry.amount),
                    str(entry.grant_id or "-"),
                    _moment(entry.expires_at),
                    f"{entry.period:%Y-%m}" if entry.period else "-",
                    _moment(entry.created_at),
                    entry.actor or "-",
                    entry.reason or "-",
                )
            )
        for line in format_table(rows):
            self.stdout.write(line)


def money_text(amount: Decimal) -> str:
    """An amount at the ledger's 12 places without trailing zeros past the cents."""
    text = f"{amount.quantize(money.LEDGER_PLACES):f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"
