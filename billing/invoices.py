"""Monthly invoices: drafts computed from the ledger, finalized ones stored and immutable.

Which ledger rows an invoice carries: a month's invoice has every row of the tenant that
occurred in that month and was stored by the time it was finalized (`covers_through_id`, the
ledger's high-water mark then), plus, as adjustment lines, rows of earlier months stored after
the tenant's previous invoice was finalized. So a late event lands on the next invoice, and
every row is invoiced exactly once as long as each month is closed in order.
"""

import calendar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, Sum
from django.utils import timezone

from audit.services import audit_record
from billing import money
from billing.models import CreditNote, Invoice, InvoiceCounter, InvoiceLine, Price, UsageRecord
from saas_platform.errors import PlatformError
from tenants.models import Tenant


class InvoiceError(PlatformError):
    status = 409
    code = "invoice_error"


@dataclass(frozen=True)
class Line:
    kind: str
    model_id: str
    requests: int
    input_tokens: int
    output_tokens: int
    input_per_million: Decimal
    output_per_million: Decimal
    amount: Decimal  # rounded to the currency's minor unit


@dataclass
class InvoiceData:
    """An invoice as exports and pages show it, final or draft alike."""

    tenant: object
    period: date
    status: str
    number: str | None
    currency: str
    lines: list[Line] = field(default_factory=list)
    finalized_at: datetime | None = None

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0.00"))

    @property
    def period_end(self) -> date:
        return next_month(self.period)

    @property
    def input_tokens(self) -> int:
        return sum(line.input_tokens for line in self.lines)

    @property
    def output_tokens(self) -> int:
        return sum(line.output_tokens for line in self.lines)


def parse_period(value: str) -> date:
    """`YYYY-MM` to the month's first day; ValueError with a clear message otherwise."""
    try:
        year, month = (int(part) for part in value.split("-"))
        return date(year, month, 1)
    except (ValueError, TypeError):
        raise ValueError(f"period must be YYYY-MM, got {value!r}") from None


def month_start(moment: datetime | None = None) -> date:
    """The first day of the month of `moment` (default now), in UTC."""
    moment = (moment or timezone.now()).astimezone(UTC)
    return date(moment.year, moment.month, 1)


def next_month(period: date) -> date:
    days = calendar.monthrange(period.year, period.month)[1]
    return date.fromordinal(period.toordinal() + days)


def _start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _lines(tenant, period: date, after_id: int, through_id: int) -> tuple[list[Line], str]:
    start, end = _start(period), _start(next_month(period))
    tenant_rows = UsageRecord.objects.filter(tenant=tenant, id__lte=through_id)
    groups = [
        (InvoiceLine.Kind.USAGE, tenant_rows.filter(occurred_at__gte=start, occurred_at__lt=end)),
        (InvoiceLine.Kind.ADJUSTMENT, tenant_rows.filter(occurred_at__lt=start, id__gt=after_id)),
    ]
    lines, currencies = [], set()
    for kind, rows in groups:
        sums = (
            rows.values("model_id", "price_id", "currency")
            .annotate(
                n=Count("id"),
                inp=Sum("prompt_tokens"),
                out=Sum("completion_tokens"),
                total=Sum("amount"),
            )
            .order_by("model_id", "price_id")
        )
        prices = Price.objects.in_bulk({row["price_id"] for row in sums} - {None})
        for row in sums:
            price = prices.get(row["price_id"])
            currencies.add(row["currency"])
            lines.append(
                Line(
                    kind=kind,
                    model_id=row["model_id"],
                    requests=row["n"],
                    input_tokens=row["inp"],
                    output_tokens=row["out"],
                    input_per_million=price.input_per_million if price else Decimal(0),
                    output_per_million=price.output_per_million if price else Decimal(0),
                    amount=money.round_line(row["total"], row["currency"]),
                )
            )
    if len(currencies) > 1:
        raise InvoiceError(f"usage is priced in several currencies: {sorted(currencies)}")
    return lines, (currencies.pop() if currencies else settings.BILLING_CURRENCY)


def _previous_through(tenant, period: date) -> int:
    previous = Invoice.objects.filter(tenant=tenant, period__lt=period).order_by("-period").first()
    return previous.covers_through_id if previous else 0


def invoice_data(invoice: Invoice) -> InvoiceData:
    """A finalized invoice as exports and pages show it."""
    return InvoiceData(
        tenant=invoice.tenant,
        period=invoice.period,
        status=invoice.status,
        number=invoice.number,
        currency=invoice.currency,
        finalized_at=invoice.finalized_at,
        lines=[
            Line(
                line.kind,
                line.model_id,
                line.requests,
                line.input_tokens,
                line.output_tokens,
                line.input_per_million,
                line.output_per_million,
                line.amount,
            )
            for line in invoice.lines.all()
        ],
    )


def invoice_for(tenant, period: date) -> InvoiceData:
    """The month's invoice: the finalized one, or a draft that follows usage as it comes."""
    invoice = Invoice.objects.filter(tenant=tenant, period=period).first()
    if invoice is not None:
        return invoice_data(invoice)
    through = UsageRecord.objects.aggregate(top=Max("id"))["top"] or 0
    lines, currency = _lines(tenant, period, _previous_through(tenant, period), through)
    return InvoiceData(tenant=tenant, period=period, status=Invoice.Status.DRAFT, number=None,
                       currency=currency, lines=lines)  # fmt: skip


def _next_number(series: str, year: int) -> str:
    counter, _ = InvoiceCounter.objects.select_for_update().get_or_create(series=series, year=year)
    counter.last += 1
    counter.save(update_fields=["last"])
    return f"{series}-{year}-{counter.last:06d}"


def _lock_ledger() -> None:
    # Rows stored while we read would get ids below the high-water mark but be missed; a share
    # lock makes writers wait until this invoice is committed (SQLite writes one at a time).
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {UsageRecord._meta.db_table} IN SHARE MODE")


@transaction.atomic
def invoice_close(*, tenant, period: date) -> Invoice:
    """Finalize the tenant's invoice for a month: numbered without gaps in the year, its lines
    and totals snapshotted. Closing a closed month returns its invoice."""
    existing = Invoice.objects.filter(tenant=tenant, period=period).first()
    if existing is not None:
        return existing
    if next_month(period) > timezone.now().date():
        raise InvoiceError(f"{period:%Y-%m} has not ended yet")
    if Invoice.objects.filter(tenant=tenant, period__gt=period).exists():
        raise InvoiceError(f"a later month is already closed for {tenant.slug}")
    _lock_ledger()
    through = UsageRecord.objects.aggregate(top=Max("id"))["top"] or 0
    lines, currency = _lines(tenant, period, _previous_through(tenant, period), through)
    now = timezone.now()
    invoice = Invoice.objects.create(
        tenant=tenant,
        period=period,
        status=Invoice.Status.FINAL,
        number=_next_number("INV", now.year),
        currency=currency,
        total=sum((line.amount for line in lines), Decimal("0.00")),
        covers_through_id=through,
        finalized_at=now,
    )
    InvoiceLine.objects.bulk_create(InvoiceLine(invoice=invoice, **line.__dict__) for line in lines)
    audit_record(
        action="invoice.closed",
        obj=invoice,
        changes={"status": (None, invoice.status), "number": (None, invoice.number),
                 "total": (None, invoice.total)},
    )  # fmt: skip
    return invoice


def invoices_close_due(*, now: datetime | None = None) -> list[Invoice]:
    """Close last month for every tenant once the grace period for late events has passed
    (INVOICE_GRACE_DAYS after the month's end). Celery beat runs this daily."""
    now = now or timezone.now()
    this_month = date(now.year, now.month, 1)
    last_month = date.fromordinal(this_month.toordinal() - 1).replace(day=1)
    if (now.date() - this_month).days < settings.INVOICE_GRACE_DAYS:
        return []
    closed = []
    for tenant in Tenant.objects.exclude(invoices__period=last_month):
        closed.append(invoice_close(tenant=tenant, period=last_month))
    return closed


@transaction.atomic
def credit_note_issue(*, invoice: Invoice, amount: Decimal, reason: str) -> CreditNote:
    """Correct a finalized invoice by crediting part or all of it (never more than is left)."""
    credited = invoice.credit_notes.aggregate(total=Sum("amount"))["total"] or Decimal(0)
    if amount <= 0 or amount + credited > invoice.total:
        raise InvoiceError(
            f"a credit must be positive and at most {invoice.total - credited} {invoice.currency}"
        )
    if not reason.strip():
        raise InvoiceError("a credit note needs a reason")
    note = CreditNote.objects.create(
        invoice=invoice,
        amount=money.round_line(amount, invoice.currency),
        reason=reason.strip(),
        number=_next_number("CN", timezone.now().year),
    )
    audit_record(
        action="invoice.credited",
        obj=invoice,
        changes={"credit_note": (None, note.number), "amount": (None, note.amount),
                 "reason": (None, note.reason)},
    )  # fmt: skip
    return note
