"""The tenant-scoped billing API (Django REST framework), authenticated by API key.

    GET /api/invoices                        finalized invoices and this month's draft
    GET /api/invoices/<YYYY-MM>.<csv|json|pdf>  one month's invoice as a download
    GET /api/usage.csv?start=ISO&end=ISO     the per-request ledger, streamed

Every lookup goes through the key's tenant (`request.auth.tenant`); no URL carries an object id.
Errors have OpenAI's shape, as on /v1/.
"""

import re
from datetime import UTC, date, datetime

from django.urls import reverse
from django.utils import timezone
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import exports
from billing.downloads import invoice_download, usage_download
from billing.invoices import invoice_for
from billing.models import Invoice
from saas_platform.errors import PlatformError
from saas_platform.periods import month_range, month_start, next_month, parse_period
from tenants.api_auth import (
    ApiKeyAuthentication,
    HasTenantKey,
    IgnoreAcceptHeader,
    openai_exception_handler,
)

_PERIOD = re.compile(r"\d{4}-\d{2}")


class InvalidPeriod(PlatformError):
    code = "invalid_period"


class InvalidDateRange(PlatformError):
    code = "invalid_date_range"


class UnknownFormat(PlatformError):
    status = 404
    code = "unknown_format"


class UnknownParameter(PlatformError):
    code = "unknown_parameter"


class TenantApiView(APIView):
    """The base of this API's views: API key only (never a session), JSON, OpenAI errors."""

    authentication_classes = [ApiKeyAuthentication]
    # Explicit: the project's default is IsAdminUser, which an API key never is.
    permission_classes = [HasTenantKey]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = IgnoreAcceptHeader

    # Query parameters the view reads; any other is refused, so a typo ("strat=") is an error
    # rather than a silently different answer.
    query_parameters: frozenset[str] = frozenset()

    def get_exception_handler(self):
        return openai_exception_handler

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        unknown = sorted(set(request.query_params) - self.query_parameters)
        if unknown:
            known = ", ".join(sorted(self.query_parameters)) or "none"
            raise UnknownParameter(
                f"unknown query parameter {unknown[0]!r}; this endpoint takes: {known}",
                param=unknown[0],
            )


class InvoiceListApi(TenantApiView):
    class OutputSerializer(serializers.Serializer):
        number = serializers.CharField(allow_null=True)
        status = serializers.CharField()
        period = serializers.DateField(format="%Y-%m")
        total = serializers.DecimalField(max_digits=None, decimal_places=None)
        currency = serializers.CharField()
        finalized_at = serializers.DateTimeField(allow_null=True)
        files = serializers.SerializerMethodField()

        def get_files(self, invoice) -> dict[str, str]:
            period = f"{invoice.period:%Y-%m}"
            return {
                fmt: reverse("billing:invoice-export", kwargs={"period": period, "fmt": fmt})
                for fmt in exports.FORMATS
            }

    def get(self, request):
        tenant = request.auth.tenant
        finals = Invoice.objects.filter(tenant=tenant, status=Invoice.Status.FINAL)
        draft = invoice_for(tenant, month_start())
        return Response(
            {
                "object": "list",
                "data": self.OutputSerializer(finals.order_by("-period"), many=True).data,
                "draft": self.OutputSerializer(draft).data,
            }
        )


def _parse_period(value: str) -> date:
    try:
        if not _PERIOD.fullmatch(value):
            raise ValueError
        period = parse_period(value)
        next_month(period)  # December 9999 has no end to compute
    except ValueError:
        raise InvalidPeriod(
            f"period must be a month as YYYY-MM, got {value!r}", param="period"
        ) from None
    return period


class InvoiceExportApi(TenantApiView):
    """A month's invoice as a file: the finalized one, else the draft (empty for a month
    without usage, even one before the tenant existed)."""

    def get(self, request, period: str, fmt: str):
        if fmt not in exports.FORMATS:
            raise UnknownFormat(
                f"unknown format {fmt!r}; use one of {', '.join(exports.FORMATS)}", param="format"
            )
        return invoice_download(invoice_for(request.auth.tenant, _parse_period(period)), fmt)


def _parse_moment(name: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
        if not timezone.is_naive(moment):
            moment = moment.astimezone(UTC)  # overflows here, not later, for year 1 or 9999
    except (ValueError, OverflowError):
        raise InvalidDateRange(
            f"{name} must be an ISO 8601 date and time, e.g. 2026-11-01T00:00:00Z", param=name
        ) from None
    if timezone.is_naive(moment):
        raise InvalidDateRange(
            f"{name} needs a time zone, e.g. 2026-11-01T00:00:00Z or +01:00", param=name
        )
    return moment


def _usage_range(query) -> tuple[datetime, datetime]:
    if "start" not in query and "end" not in query:
        return month_range(month_start())
    for name in ("start", "end"):
        if name not in query:
            raise InvalidDateRange(f"{name} is required when the other bound is given", param=name)
    start, end = _parse_moment("start", query["start"]), _parse_moment("end", query["end"])
    if end <= start:
        raise InvalidDateRange("end must be after start", param="end")
    return start, end


class UsageCsvApi(TenantApiView):
    """The tenant's ledger rows in [start, end) as CSV, streamed (default: this month)."""

    query_parameters = frozenset({"start", "end"})

    def get(self, request):
        start, end = _usage_range(request.query_params)
        return usage_download(request._request, request.auth.tenant, start, end)
