"""Exports of an invoice (CSV, JSON, PDF) and of a tenant's per-request usage (CSV).

Every amount is written as the exact Decimal string the ledger or invoice holds (never a float),
so a total summed from an export matches the invoice to the cent.

Invoice CSV (`invoice_csv`): RFC 4180 (comma, double quotes, CRLF), UTF-8, a header row, then
one row per invoice line in the invoice's order. The columns, stable (new ones only ever go at
the end):

    invoice_number            the invoice's number; empty for a draft
    status                    draft | final (a draft is not an invoice: its lines follow usage)
    tenant                    the tenant's slug
    period                    the invoiced month, YYYY-MM
    currency                  ISO 4217 code of every amount and price in the file
    line_kind                 usage (the month's own requests) | cached (their input tokens
                              the engine served from its prompt cache) | adjustment (late
                              usage from earlier months, stored after their invoice was
                              finalized) | late_cached (the cached input of that late usage)
    model                     the public model id
    requests                  number of requests (0 on a cached line: counted on its usage line)
    input_tokens              prompt tokens (on a usage line, those not served from the cache)
    output_tokens             completion tokens
    input_price_per_million   price of a million input tokens (0 for an unpriced model; on a
                              cached line, the cached input price)
    output_price_per_million  price of a million output tokens
    amount                    the line's amount, rounded once to the currency's minor unit
    credits_applied           the invoice's prepaid credits drawn down by its usage (the same
                              on every row; 0.00 without credits)
    amount_due                the invoice's total less the credits applied, never below 0

An invoice without lines is the header row alone.

Every text cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return gets a single
quote in front (OWASP's rule against CSV formula injection): a spreadsheet would run it as a
formula. Numbers (token counts, prices, amounts, negative ones too) are written as they are.

Usage CSV (`usage_csv_rows`): the same dialect, one row per ledger row (per request):

    request_id         the gateway's request id (x-request-id)
    occurred_at        when the request ended, ISO 8601 in UTC (e.g. 2026-11-05T09:30:00Z)
    model              the public model id
    api_key_prefix     the key's public prefix (sk-XXXXXXXX); never the key
    prompt_tokens      input tokens
    completion_tokens  output tokens
    status             the HTTP status the client got (499: it went away mid-stream)
    usage_source       reported (by the engine) | counted (by the gateway itself)
    amount             the request's exact cost (12 decimal places; not rounded)
    currency           ISO 4217 code of amount
    cached_tokens      of the prompt tokens, those served from the engine's prompt cache
    cached_amount      their cost at the cached input price (part of amount)
"""

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple
from xml.sax.saxutils import escape

from django.conf import settings
from django.utils import timezone
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing import money
from billing.invoices import InvoiceData
from billing.models import Invoice, UsageRecord
from saas_platform import periods
from saas_platform.spreadsheets import SafeWriter

INVOICE_COLUMNS = (
    "invoice_number", "status", "tenant", "period", "currency", "line_kind", "model",
    "requests", "input_tokens", "output_tokens", "input_price_per_million",
    "output_price_per_million", "amount", "credits_applied", "amount_due",
)  # fmt: skip
USAGE_COLUMNS = (
    "request_id", "occurred_at", "model", "api_key_prefix", "prompt_tokens",
    "completion_tokens", "status", "usage_source", "amount", "currency", "cached_tokens",
    "cached_amount",
)  # fmt: skip
# The ledger's fields for those columns, in the same order (the cached amount from the price).
_USAGE_FIELDS = (
    "request_id", "occurred_at", "model_id", "api_key_prefix", "prompt_tokens",
    "completion_tokens", "status", "counted", "amount", "currency", "cached_tokens",
    "price__input_per_million", "price__cached_input_per_million",
)  # fmt: skip
FORMATS = ("csv", "json", "pdf")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "pdf": "application/pdf",
}
USAGE_CHUNK_ROWS = 2000  # ledger rows fetched from the server-side cursor per round trip
_FLUSH_BYTES = 64 * 1024  # a yielded chunk is about this big: few writes, little memory


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _is_draft(data: InvoiceData) -> bool:
    return data.status != Invoice.Status.FINAL


def _line_dicts(data: InvoiceData) -> list[dict]:
    """The lines with every value as it is written: decimals as exact strings."""
    return [
        {
            "kind": str(line.kind),
            "model": line.model_id,
            "requests": line.requests,
            "input_tokens": line.input_tokens,
            "output_tokens": line.output_tokens,
            "input_price_per_million": str(line.input_per_million),
            "output_price_per_million": str(line.output_per_million),
            "amount": str(line.amount),
        }
        for line in data.lines
    ]


def export_filename(data: InvoiceData, fmt: str) -> str:
    """`acme-2026-11-INV-2026-000001.pdf` for a final invoice, `acme-2026-11-draft.csv` for a
    draft: the tenant, the month, and what the document is."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    what = "draft" if _is_draft(data) else data.number
    return f"{data.tenant.slug}-{data.period:%Y-%m}-{what}.{fmt}"


def invoice_csv(data: InvoiceData) -> bytes:
    """The invoice as CSV: a header row, then one row per line (columns in the module doc)."""
    out = io.StringIO()
    writer = SafeWriter(out)
    writer.writerow(INVOICE_COLUMNS)
    invoice = [
        "" if _is_draft(data) else data.number,
        str(data.status),
        data.tenant.slug,
        f"{data.period:%Y-%m}",
        data.currency,
    ]
    for line in data.lines:
        # Numbers as numbers (Decimal's str is the exact string): only text is neutralised.
        writer.writerow([*invoice, str(line.kind), line.model_id, line.requests,
                         line.input_tokens, line.output_tokens, line.input_per_million,
                         line.output_per_million, line.amount, data.credits_applied,
                         data.amount_due])  # fmt: skip
    return out.getvalue().encode()


def invoice_json(data: InvoiceData) -> bytes:
    """The invoice as JSON: `{"invoice": {...}, "lines": [...]}`, decimals as strings."""
    document = {
        "invoice": {
            "number": None if _is_draft(data) else data.number,
            "status": str(data.status),
            "tenant": data.tenant.slug,
            "tenant_name": data.tenant.name,
            "period": f"{data.period:%Y-%m}",
            "currency": data.currency,
            "total": str(data.total),
            "credits_applied": str(data.credits_applied),
            "amount_due": str(data.amount_due),
            "finalized_at": _iso(data.finalized_at),
            "issuer": {
                "name": settings.BILLING_OPERATOR_NAME,
                "address": settings.BILLING_OPERATOR_ADDRESS,
            },
        },
        "lines": _line_dicts(data),
    }
    return json.dumps(document, indent=2, ensure_ascii=False).encode()


# --- PDF ------------------------------------------------------------------------------------

_STYLES = getSampleStyleSheet()
_BODY = ParagraphStyle(
    "body", parent=_STYLES["Normal"], fontName="Helvetica", fontSize=10, leading=13
)
_CELL = ParagraphStyle("cell", parent=_BODY, fontSize=8, leading=10)
_TITLE = ParagraphStyle("title", parent=_STYLES["Title"], fontName="Helvetica-Bold",
                        fontSize=18, alignment=TA_RIGHT, spaceAfter=0)  # fmt: skip
_ISSUER = ParagraphStyle("issuer", parent=_BODY, fontName="Helvetica-Bold", fontSize=12,
                         leading=15)  # fmt: skip
_TOTAL = ParagraphStyle("total", parent=_BODY, fontName="Helvetica-Bold", fontSize=12,
                        alignment=TA_RIGHT, spaceBefore=6)  # fmt: skip
_DRAFT_TITLE = ParagraphStyle("draft", parent=_TITLE, textColor=colors.HexColor("#b00020"))
_KIND_LABELS = {"usage": "Usage", "cached": "Cached input", "adjustment": "Late usage",
                "late_cached": "Late cached input"}  # fmt: skip


def _para(text: str, style: ParagraphStyle = _BODY) -> Paragraph:
    # Paragraphs parse a little XML: names and addresses must not be read as markup.
    return Paragraph(escape(text).replace("\n", "<br/>"), style)


def _price(value: Decimal) -> str:
    # Prices are stored with 6 places; show them as people write them (0.15, not 0.150000).
    shown = value.normalize()
    if shown.as_tuple().exponent > -2:
        shown = value.quantize(Decimal("0.01"))
    return f"{shown:,}"


def _header(data: InvoiceData) -> list:
    left = [_para(settings.BILLING_OPERATOR_NAME, _ISSUER)]
    if settings.BILLING_OPERATOR_ADDRESS:
        left.append(_para(settings.BILLING_OPERATOR_ADDRESS))
    if _is_draft(data):
        right = _para("DRAFT — not an invoice", _DRAFT_TITLE)
    else:
        right = _para("INVOICE", _TITLE)
    table = Table([[left, right]], colWidths=["55%", "45%"])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LEFTPADDING", (0, 0), (0, 0), 0),
                               ("RIGHTPADDING", (-1, 0), (-1, 0), 0)]))  # fmt: skip
    return [table, Spacer(1, 8 * mm)]


def _details(data: InvoiceData) -> list:
    if _is_draft(data):
        number, issued = "none (draft)", f"not issued (draft as of {timezone.now():%Y-%m-%d})"
    else:
        number, issued = data.number, f"{data.finalized_at.astimezone(UTC):%Y-%m-%d}"
    last_day = periods.month_last_day(data.period)
    rows = [
        ("Bill to", f"{data.tenant.name} ({data.tenant.slug})"),
        ("Invoice number", number),
        ("Period", f"{data.period:%B %Y} ({data.period:%Y-%m-%d} to {last_day:%Y-%m-%d}, UTC)"),
        ("Issue date", issued),
        ("Currency", data.currency),
    ]
    table = Table([[label, _para(value)] for label, value in rows], colWidths=[35 * mm, None])
    table.setStyle(TableStyle([("FONT", (0, 0), (0, -1), "Helvetica-Bold", 10),
                               ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LEFTPADDING", (0, 0), (0, -1), 0),
                               ("TOPPADDING", (0, 0), (-1, -1), 1),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 1)]))  # fmt: skip
    return [table, Spacer(1, 8 * mm)]


def _lines_table(data: InvoiceData) -> Table:
    head = ["Model", "Kind", "Requests", "Input\ntokens", "Output\ntokens", "Price in\n/ 1M tok.",
            "Price out\n/ 1M tok.", f"Amount\n({data.currency})"]  # fmt: skip
    rows: list[list] = [head]
    for line in data.lines:
        rows.append([
            _para(line.model_id, _CELL), _KIND_LABELS.get(str(line.kind), str(line.kind)),
            f"{line.requests:,}", f"{line.input_tokens:,}", f"{line.output_tokens:,}",
            _price(line.input_per_million), _price(line.output_per_million), f"{line.amount:,}",
        ])  # fmt: skip
    if not data.lines:
        rows.append([_para("No usage in this period.", _CELL), "", "", "", "", "", "", "0"])
    requests = sum(line.requests for line in data.lines)
    rows.append(["Total", "", f"{requests:,}", f"{data.input_tokens:,}", f"{data.output_tokens:,}",
                 "", "", f"{data.total:,}"])  # fmt: skip
    widths = [40 * mm, 19 * mm, 16 * mm, 22 * mm, 22 * mm, 19 * mm, 19 * mm, None]
    table = Table(rows, colWidths=widths, repeatRows=1)
    table.setStyle(TableStyle([
        ("FONTNAME", (0, 0), (-1, -1), "Helvetica"),
        ("FONTSIZE", (0, 0), (-1, -1), 8),
        ("LEFTPADDING", (2, 0), (-1, -1), 2),  # room for a billion tokens
        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"),
        ("ALIGN", (2, 0), (-1, -1), "RIGHT"),  # numbers line up on the right
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, 0), 0.75, colors.black),
        ("LINEABOVE", (0, -1), (-1, -1), 0.75, colors.black),
        ("ROWBACKGROUNDS", (0, 1), (-1, -2), [colors.white, colors.HexColor("#f3f4f6")]),
    ]))  # fmt: skip
    return table


def _page_decorations(data: InvoiceData):
    """Draws on every page: a footer naming the document and page, and for a draft a large
    DRAFT mark across the page, so no page of it can pass for an invoice on its own."""
    what = "DRAFT, not an invoice" if _is_draft(data) else f"Invoice {data.number}"
    footer = f"{what} · {data.tenant.slug} · {data.period:%Y-%m}"

    def draw(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(doc.leftMargin, 10 * mm, footer)
        canvas.drawRightString(A4[0] - doc.rightMargin, 10 * mm, f"Page {doc.page}")
        if _is_draft(data):
            canvas.setFont("Helvetica-Bold", 90)
            canvas.setFillColor(colors.Color(0.85, 0.1, 0.1, alpha=0.12))
            canvas.translate(A4[0] / 2, A4[1] / 2)
            canvas.rotate(45)
            canvas.drawCentredString(0, 0, "DRAFT")
        canvas.restoreState()

    return draw


def _credit_paras(data: InvoiceData) -> list:
    """Usage and the prepaid credits applied to it, above the amount due, when there are any."""
    if not data.credits_applied:
        return []
    return [
        _para(f"Usage: {data.total:,} {data.currency}"),
        _para(f"Prepaid credits applied: -{data.credits_applied:,} {data.currency}"),
    ]


def invoice_pdf(data: InvoiceData) -> bytes:
    """The invoice as a PDF to send: issuer, customer, number (or a DRAFT mark), period, issue
    date, a table of lines with right-aligned numbers, and the total."""
    buffer = io.BytesIO()
    title = f"Invoice {data.number}" if not _is_draft(data) else "Draft invoice (not an invoice)"
    doc = SimpleDocTemplate(
        buffer, pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=18 * mm,
        bottomMargin=18 * mm, title=f"{title}, {data.tenant.slug} {data.period:%Y-%m}",
        author=settings.BILLING_OPERATOR_NAME,
    )  # fmt: skip
    due = "Total so far" if _is_draft(data) else "Total due"  # after any credits applied
    notes = ("Prices are per million tokens. Late usage: requests of earlier months recorded "
             "after their invoice was issued.")  # fmt: skip
    if _is_draft(data):
        notes += " This draft follows usage as it is recorded; it changes until the month closes."
    story = [
        *_header(data),
        *_details(data),
        _lines_table(data),
        *_credit_paras(data),
        _para(f"{due}: {data.amount_due:,} {data.currency}", _TOTAL),
        Spacer(1, 6 * mm),
        _para(notes, _CELL),
    ]
    decorate = _page_decorations(data)
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return buffer.getvalue()


EXPORTERS = {"csv": invoice_csv, "json": invoice_json, "pdf": invoice_pdf}


# --- Usage ----------------------------------------------------------------------------------


def _csv_line(values) -> bytes:
    out = io.StringIO()
    SafeWriter(out).writerow(values)
    return out.getvalue().encode()


def usage_csv_rows(
    tenant, start: datetime, end: datetime, *, model_id: str = ""
) -> Iterator[bytes]:
    """CSV chunks (the header first) of the tenant's ledger rows with start <= occurred_at <
    end (of one model, if given), in time order. Rows are read through a server-side cursor a
    chunk at a time, so a month of requests is never in memory at once. The bounds are checked
    now, not when the first chunk is asked for (which, for a streamed response, is after the
    status was sent)."""
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise ValueError("start and end need a time zone")
    if end <= start:
        raise ValueError("end must be after start")
    rows = UsageRecord.objects.filter(tenant=tenant, occurred_at__gte=start, occurred_at__lt=end)
    if model_id:
        rows = rows.filter(model_id=model_id)
    rows = rows.order_by("occurred_at", "id").values_list(
        *_USAGE_FIELDS
    )  # id: a stable order for rows of the same moment
    return _usage_chunks(rows)


class _RowPrice(NamedTuple):
    """A ledger row's price as money.cached_amount reads it."""

    input_per_million: Decimal
    cached_input_per_million: Decimal | None

    @property
    def cached_price(self) -> Decimal:
        if self.cached_input_per_million is None:
            return self.input_per_million
        return self.cached_input_per_million


def _usage_chunks(rows) -> Iterator[bytes]:
    yield _csv_line(USAGE_COLUMNS)
    out = io.StringIO()
    writer = SafeWriter(out)
    for row in rows.iterator(chunk_size=USAGE_CHUNK_ROWS):
        (request_id, at, model, prefix, prompt, completion, status, counted, amount, currency,
         cached, input_price, cached_price) = row  # fmt: skip
        source = "counted" if counted else "reported"
        price = _RowPrice(input_price, cached_price) if input_price is not None else None
        writer.writerow([request_id, _iso(at), model, prefix, prompt, completion, status, source,
                         amount, currency, cached,
                         f"{money.cached_amount(cached, price):f}"])  # fmt: skip
        if out.tell() >= _FLUSH_BYTES:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    if out.tell():
        yield out.getvalue().encode()
