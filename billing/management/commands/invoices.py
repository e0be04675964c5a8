from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.management.base import CommandError

from billing import invoices
from billing.models import Invoice
from saas_platform import periods
from saas_platform.cli import ScriptableCommand, format_table
from tenants.models import Tenant


def _period(value: str):
    return periods.parse_period(value)


_period.__name__ = "period (YYYY-MM)"


class Command(ScriptableCommand):
    help = "Close, list, export and credit monthly invoices."

    def add_arguments(self, parser):
        actions = self.add_actions(parser)
        close = actions.add_parser("close", help="finalize a month's invoices")
        close.add_argument("--period", type=_period, required=True, metavar="YYYY-MM")
        close.add_argument("--tenant", metavar="SLUG", help="only this tenant (default: all)")
        export = actions.add_parser("export", help="write invoices as files, one per tenant")
        export.add_argument("--period", type=_period, required=True, metavar="YYYY-MM")
        export.add_argument("--tenant", metavar="SLUG")
        export.add_argument("--format", choices=["csv", "pdf", "json"], required=True)
        export.add_argument("--out", type=Path, required=True, metavar="DIR")
        listing = actions.add_parser("list", help="list finalized invoices")
        listing.add_argument("--period", type=_period, metavar="YYYY-MM")
        credit = actions.add_parser("credit", help="issue a credit note against an invoice")
        credit.add_argument("number", metavar="INVOICE_NUMBER")
        credit.add_argument("--amount", required=True, metavar="AMOUNT")
        credit.add_argument("--reason", required=True)

    @staticmethod
    def _tenants(slug: str | None):
        if slug is None:
            return list(Tenant.objects.all())
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"no tenant with slug {slug!r}")
        return [tenant]

    def handle_close(self, options):
        chosen = self._tenants(options["tenant"]) if options["tenant"] else None
        result = invoices.invoices_close_month(period=options["period"], tenants=chosen)
        for invoice in sorted(result.already + result.finalized, key=lambda i: i.tenant.slug):
            self.stdout.write(
                f"{invoice.number} {invoice.tenant.slug} {invoice.period:%Y-%m} "
                f"{invoice.total} {invoice.currency}"
            )
        if result.failures:
            # The others are closed; these are recorded and retried by the next close.
            first = result.failures[0]
            raise CommandError(
                f"{len(result.failures)} tenant(s) not closed for {options['period']:%Y-%m}: "
                f"{first.tenant.slug}: {first.message}"
                + (f" (and {len(result.failures) - 1} more)" if len(result.failures) > 1 else "")
            )

    def handle_export(self, options):
        from billing import exports

        out: Path = options["out"]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CommandError(f"cannot write to {out}: {error.strerror}") from None
        render = {"csv": exports.invoice_csv, "pdf": exports.invoice_pdf,
                  "json": exports.invoice_json}[options["format"]]  # fmt: skip
        for tenant in self._tenants(options["tenant"]):
            data = invoices.invoice_for(tenant, options["period"])
            path = out / exports.export_filename(data, options["format"])
            path.write_bytes(render(data))
            self.stdout.write(str(path))

    def handle_list(self, options):
        found = Invoice.objects.select_related("tenant")
        if options["period"]:
            found = found.filter(period=options["period"])
        rows = [("NUMBER", "TENANT", "PERIOD", "TOTAL", "CURRENCY", "FINALIZED")]
        for invoice in found:
            rows.append((invoice.number, invoice.tenant.slug, f"{invoice.period:%Y-%m}",
                         str(invoice.total), invoice.currency,
                         invoice.finalized_at.strftime("%Y-%m-%d")))  # fmt: skip
        for line in format_table(rows):
            self.stdout.write(line)

    def handle_credit(self, options):
        invoice = Invoice.objects.filter(number=options["number"]).first()
        if invoice is None:
            raise CommandError(f"no invoice numbered {options['number']!r}")
        try:
            amount = Decimal(options["amount"])
        except InvalidOperation:
            raise CommandError(
                f"--amount must be a decimal amount, got {options['amount']!r}"
            ) from None
        note = invoices.credit_note_issue(invoice=invoice, amount=amount, reason=options["reason"])
        self.stdout.write(
            f"{note.number} credits {note.amount} {invoice.currency} on {invoice.number}"
        )
