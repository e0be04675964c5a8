"""Monthly invoices: drafts computed from the ledger, finalized ones stored and immutable.

Which ledger rows an invoice carries: a month's invoice has every row of the tenant that
occurred in that month and was stored by the time it was finalized (`covers_through_id`, the
ledger's high-water mark then), plus, as adjustment lines, rows of earlier months stored after
the tenant's previous invoice was finalized. So a late event lands on the next invoice, and
every row is invoiced exactly once as long as each month is closed in order.
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Max, Sum
from django.urls import reverse
from django.utils import timezone

from audit.services import audit_record
from billing import credits, money
from billing.models import (
    CreditNote,
    Invoice,
    InvoiceCloseFailure,
    InvoiceCounter,
    InvoiceLine,
    Price,
    UsageRecord,
)
from billing.webhooks import webhook_event_emit
from saas_platform.errors import PlatformError
from saas_platform.periods import month_range, month_start, next_month, previous_month
from saas_platform.site import absolute_url
from tenants.models import Tenant

logger = logging.getLogger(__name__)


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
    # Prepaid credits drawn down by this invoice's usage (billing.credits), rounded as a line.
    credits_applied: Decimal = Decimal("0.00")

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0.00"))

    @property
    def amount_due(self) -> Decimal:
        """The usage less the credits applied, never below zero."""
        return max(Decimal("0.00"), self.total - self.credits_applied)

    @property
    def period_end(self) -> date:
        return next_month(self.period)

    @property
    def input_tokens(self) -> int:
        return sum(line.input_tokens for line in self.lines)

    @property
    def output_tokens(self) -> int:
        return sum(line.output_tokens for line in self.lines)


def _lines(tenant, period: date, after_id: int, through_id: int) -> tuple[list[Line], str]:
    start, end = month_range(period)
    tenant_rows = UsageRecord.objects.filter(tenant=tenant, id__lte=through_id)
    groups = [
        (InvoiceLine.Kind.USAGE, InvoiceLine.Kind.CACHED,
         tenant_rows.filter(occurred_at__gte=start, occurred_at__lt=end)),
        (InvoiceLine.Kind.ADJUSTMENT, InvoiceLine.Kind.LATE_CACHED,
         tenant_rows.filter(occurred_at__lt=start, id__gt=after_id)),
    ]  # fmt: skip
    lines, currencies = [], set()
    for kind, cached_kind, rows in groups:
        sums = (
            rows.values("model_id", "price_id", "currency")
            .annotate(
                n=Count("id"),
                inp=Sum("prompt_tokens"),
                out=Sum("completion_tokens"),
                cached=Sum("cached_tokens"),
                total=Sum("amount"),
            )
            .order_by("model_id", "price_id")
        )
        prices = Price.objects.in_bulk({row["price_id"] for row in sums} - {None})
        for row in sums:
            price = prices.get(row["price_id"])
            currencies.add(row["currency"])
            lines.extend(_priced_lines(kind, cached_kind, row, price))
    if len(currencies) > 1:
        raise InvoiceError(f"usage is priced in several currencies: {sorted(currencies)}")
    return lines, (currencies.pop() if currencies else settings.BILLING_CURRENCY)


def _priced_lines(kind: str, cached_kind: str, row: dict, price) -> list[Line]:
    """A group's usage line and, when the engine served some input from its prompt cache, a
    cached input line priced at the cached price: the usage line has the rest of the input
    tokens and the rest of the exact amount, so the two add up to what the ledger holds."""
    cached = row["cached"] or 0
    cached_total = money.cached_amount(cached, price)
    zero = Decimal(0)
    lines = [
        Line(
            kind=kind,
            model_id=row["model_id"],
            requests=row["n"],
            input_tokens=row["inp"] - cached,
            output_tokens=row["out"],
            input_per_million=price.input_per_million if price else zero,
            output_per_million=price.output_per_million if price else zero,
            amount=money.round_line(row["total"] - cached_total, row["currency"]),
        )
    ]
    if cached:
        lines.append(
            Line(
                kind=cached_kind,
                model_id=row["model_id"],
                requests=0,  # counted on the usage line
                input_tokens=cached,
                output_tokens=0,
                input_per_million=price.cached_price if price else zero,
                output_per_million=zero,
                amount=money.round_line(cached_total, row["currency"]),
            )
        )
    return lines


def _previous_through(tenant, period: date) -> int:
    previous = Invoice.objects.filter(tenant=tenant, period__lt=period).order_by("-period").first()
    return previous.covers_through_id if previous else 0


def _credits_applied(tenant, period: date, after_id: int, through_id: int, currency: str):
    return money.round_line(credits.credits_applied(tenant, period, after_id, through_id),
                            currency)  # fmt: skip


def invoice_data(invoice: Invoice) -> InvoiceData:
    """A finalized invoice as exports and pages show it."""
    applied = _credits_applied(invoice.tenant, invoice.period,
                               _previous_through(invoice.tenant, invoice.period),
                               invoice.covers_through_id, invoice.currency)  # fmt: skip
    return InvoiceData(
        tenant=invoice.tenant,
        period=invoice.period,
        status=invoice.status,
        number=invoice.number,
        currency=invoice.currency,
        finalized_at=invoice.finalized_at,
        credits_applied=applied,
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
    after = _previous_through(tenant, period)
    lines, currency = _lines(tenant, period, after, through)
    applied = _credits_applied(tenant, period, after, through, currency)
    return InvoiceData(tenant=tenant, period=period, status=Invoice.Status.DRAFT, number=None,
                       currency=currency, lines=lines, credits_applied=applied)  # fmt: skip


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
    InvoiceCloseFailure.objects.filter(tenant=tenant, period=period).delete()
    # The invoice is finalized here, once: what must follow it is sent from the closing
    # transaction (the webhook event is delivered once it commits).
    _finalized_event(invoice)
    audit_record(
        action="invoice.closed",
        obj=invoice,
        changes={"status": (None, invoice.status), "number": (None, invoice.number),
                 "total": (None, invoice.total)},
    )  # fmt: skip
    return invoice


def _finalized_event(invoice: Invoice) -> None:
    """`invoice.finalized` to the tenant's webhook, in the closing transaction."""
    path = reverse("portal:invoice_file", kwargs={"ref": invoice.number, "fmt": "pdf"})
    data = {"number": invoice.number, "period": f"{invoice.period:%Y-%m}",
            "total": str(invoice.total), "currency": invoice.currency,
            "download_url": absolute_url(path)}  # fmt: skip
    webhook_event_emit(tenant=invoice.tenant, event_type="invoice.finalized", data=data)


@dataclass(frozen=True)
class CloseFailure:
    tenant: Tenant
    message: str


@dataclass
class CloseResult:
    """What closing a month did: the invoices finalized now, those finalized before, and the
    tenants that failed (recorded as InvoiceCloseFailure, retried by the next close)."""

    period: date
    finalized: list[Invoice] = field(default_factory=list)
    already: list[Invoice] = field(default_factory=list)
    failures: list[CloseFailure] = field(default_factory=list)


def _record_failure(tenant, period: date, message: str) -> None:
    now = timezone.now()
    updated = InvoiceCloseFailure.objects.filter(tenant=tenant, period=period).update(
        error=message[:500], attempts=F("attempts") + 1, last_failed_at=now
    )
    if not updated:
        InvoiceCloseFailure.objects.create(tenant=tenant, period=period, error=message[:500],
                                           first_failed_at=now, last_failed_at=now)  # fmt: skip


def invoices_close_month(*, period: date, tenants=None) -> CloseResult:
    """Close `period` for every tenant (or those given), each in its own transaction: a tenant
    that fails (bad data, a later month closed) is logged and recorded, and the others close.
    The one implementation behind beat (`invoices_close_due`), `manage.py invoices close` and
    the admin's close page."""
    if next_month(period) > timezone.now().date():
        raise InvoiceError(f"{period:%Y-%m} has not ended yet")
    result = CloseResult(period=period)
    closed = dict(Invoice.objects.filter(period=period).values_list("tenant_id", "pk"))
    chosen = Tenant.objects.order_by("slug")
    if tenants is not None:
        chosen = chosen.filter(pk__in=[tenant.pk for tenant in tenants])
    for tenant in chosen:
        if tenant.pk in closed:
            result.already.append(Invoice.objects.get(pk=closed[tenant.pk]))
            continue
        try:
            with transaction.atomic():  # a savepoint when the caller is in a transaction
                result.finalized.append(invoice_close(tenant=tenant, period=period))
        except Exception as error:  # no tenant's failure may stop the others
            if isinstance(error, PlatformError):  # a refusal with its reason: no traceback
                message = error.message
                logger.error("closing %s for %s failed: %s", f"{period:%Y-%m}", tenant.slug,
                             message)  # fmt: skip
            else:
                message = repr(error)
                logger.exception("closing %s for %s failed", f"{period:%Y-%m}", tenant.slug)
            _record_failure(tenant, period, message)
            result.failures.append(CloseFailure(tenant=tenant, message=message))
    return result


def invoices_close_due(*, now: datetime | None = None) -> CloseResult | None:
    """Close last month for every tenant once the grace period for late events has passed
    (INVOICE_GRACE_DAYS after the month's end); None before then. Celery beat runs this
    hourly, so a tenant that failed is tried again within the hour."""
    now = now or timezone.now()
    this_month = month_start(now)
    if (now.astimezone(UTC).date() - this_month).days < settings.INVOICE_GRACE_DAYS:
        return None
    return invoices_close_month(period=previous_month(this_month))


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
