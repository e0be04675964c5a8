"""Invoices and usage as HTTP downloads, for the API (billing/api.py) and the portal alike."""

from collections.abc import AsyncIterator, Generator
from datetime import datetime

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, StreamingHttpResponse
from django.utils.http import content_disposition_header

from audit.services import audit_record
from billing import exports
from billing.invoices import InvoiceData


def download_headers(filename: str) -> dict[str, str]:
    # Invoices are the tenant's private papers, and a draft changes: no shared caches.
    return {
        "Content-Disposition": content_disposition_header(True, filename),
        "Cache-Control": "private, no-store",
    }


def invoice_download(data: InvoiceData, fmt: str) -> HttpResponse:
    """`fmt` is one of exports.FORMATS (the caller has checked). Each export is in the audit
    log: an invoice leaving the platform is a fact its owner may need to trace."""
    audit_record(
        action="invoice.exported",
        tenant=data.tenant,
        object_repr=data.number or f"{data.tenant} {data.period:%Y-%m} ({data.status})",
        changes={"format": (None, fmt), "period": (None, f"{data.period:%Y-%m}")},
    )
    return HttpResponse(
        exports.EXPORTERS[fmt](data),
        content_type=exports.CONTENT_TYPES[fmt],
        headers=download_headers(exports.export_filename(data, fmt)),
    )


async def _in_request_thread(chunks: Generator[bytes]) -> AsyncIterator[bytes]:
    # Django's ASGI handler would list() a sync iterator (the whole month in memory); this pulls
    # one chunk at a time instead. thread_sensitive: every step runs on the request's thread,
    # whose database connection holds the server-side cursor.
    step = sync_to_async(next, thread_sensitive=True)
    try:
        while (chunk := await step(chunks, None)) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()  # closes the cursor


def usage_download(
    request, tenant, start: datetime, end: datetime, model_id: str = ""
) -> StreamingHttpResponse:
    """The tenant's ledger rows in [start, end) (of one model, if given) as streamed CSV."""
    chunks = exports.usage_csv_rows(tenant, start, end, model_id=model_id)
    if isinstance(request, ASGIRequest):
        chunks = _in_request_thread(chunks)
    suffix = f"-{model_id}" if model_id else ""
    filename = f"{tenant.slug}-usage-{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}{suffix}.csv"
    return StreamingHttpResponse(
        chunks, content_type="text/csv; charset=utf-8", headers=download_headers(filename)
    )
