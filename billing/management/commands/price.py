from datetime import datetime

from django.core.management.base import CommandError
from django.utils.dateparse import parse_datetime

from billing.models import Price
from billing.pricing import price_set
from saas_platform.cli import ScriptableCommand, decimal_amount, format_table
from tenants.models import Tenant


def _moment(value: str) -> datetime:
    moment = parse_datetime(value.replace(" ", "T"))
    if moment is None:
        raise ValueError(value)
    return moment


_moment.__name__ = "date-time (e.g. 2026-12-01T00:00Z)"


class Command(ScriptableCommand):
    help = "Set and list model prices (per million input and output tokens)."

    def add_arguments(self, parser):
        actions = self.add_actions(parser)
        setting = actions.add_parser("set", help="add a price, from now or from --from on")
        setting.add_argument("model", metavar="MODEL")
        setting.add_argument("--input-per-million", type=decimal_amount, required=True, metavar="X")
        setting.add_argument(
            "--output-per-million", type=decimal_amount, required=True, metavar="Y"
        )
        setting.add_argument(
            "--cached-input-per-million", type=decimal_amount, metavar="Z",
            help="input tokens served from the engine's prompt cache (default: the input price)",
        )  # fmt: skip
        setting.add_argument("--currency", help="ISO code (default: BILLING_CURRENCY)")
        setting.add_argument("--tenant", metavar="SLUG", help="the tenant's own price")
        setting.add_argument(
            "--from", dest="effective_from", type=_moment, metavar="DATETIME",
            help="when it takes effect, with a time zone (default: now)",
        )  # fmt: skip
        listing = actions.add_parser("list", help="list prices, newest first per model")
        listing.add_argument("--tenant", metavar="SLUG")

    def handle_set(self, options):
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"no tenant with slug {options['tenant']!r}")
        price = price_set(
            model_id=options["model"],
            input_per_million=options["input_per_million"],
            output_per_million=options["output_per_million"],
            cached_input_per_million=options["cached_input_per_million"],
            currency=options["currency"],
            tenant=tenant,
            effective_from=options["effective_from"],
        )
        whose = f" for {tenant.slug}" if tenant else ""
        self.stdout.write(
            f"price of {price.model_id}{whose}: {price.input_per_million} in / "
            f"{price.cached_price} cached in / "
            f"{price.output_per_million} out per million tokens, {price.currency}, "
            f"from {price.effective_from.isoformat()}"
        )

    def handle_list(self, options):
        prices = Price.objects.select_related("tenant")
        if options["tenant"]:
            prices = prices.filter(tenant__slug=options["tenant"])
        rows = [("MODEL", "TENANT", "INPUT/M", "CACHED/M", "OUTPUT/M", "CURRENCY", "FROM")]
        for price in prices:
            rows.append(
                (
                    price.model_id,
                    price.tenant.slug if price.tenant else "*",
                    str(price.input_per_million),
                    str(price.cached_price),
                    str(price.output_per_million),
                    price.currency,
                    price.effective_from.strftime("%Y-%m-%dT%H:%MZ"),
                )
            )
        for line in format_table(rows):
            self.stdout.write(line)
