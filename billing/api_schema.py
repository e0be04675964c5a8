"""The management API's OpenAPI schema (drf-spectacular), served at /api/schema.

The views in billing/api.py return files and streams that drf-spectacular cannot infer, so their
parameters and responses are described here, from outside (OpenApiViewExtension), keeping the
views themselves thin. The key authentication is a bearer scheme.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiViewExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from drf_spectacular.views import SpectacularAPIView
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from billing import exports

PERIOD = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.api_auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The tenant's API key: `Authorization: Bearer sk-...`.",
        }


ERROR = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorBody",
            {
                "message": serializers.CharField(),
                "type": serializers.CharField(),
                "code": serializers.CharField(allow_null=True),
                "param": serializers.CharField(allow_null=True),
            },
        )
    },
)


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ERROR, description=description)


REFUSALS = {
    401: _error("Missing, malformed, unknown, revoked or expired key (`invalid_api_key`)."),
    403: _error("The key's tenant is suspended (`tenant_suspended`)."),
    405: _error("Only GET is allowed (`method_not_allowed`)."),
}
FILE = OpenApiResponse(OpenApiTypes.BINARY, description="The document, as an attachment.")


class InvoiceListSchema(OpenApiViewExtension):
    target_class = "billing.api.InvoiceListApi"

    def view_replacement(self):
        # As OutputSerializer renders it (its period is a month, not the date it declares).
        fields = {
            "number": serializers.CharField(allow_null=True),
            "status": serializers.ChoiceField(choices=["draft", "final"]),
            "period": serializers.RegexField(PERIOD),
            "total": serializers.DecimalField(max_digits=None, decimal_places=None),
            "currency": serializers.CharField(),
            "finalized_at": serializers.DateTimeField(allow_null=True),
            "files": serializers.DictField(child=serializers.CharField()),
        }
        invoice = type(inline_serializer("Invoice", fields))  # one component, used twice

        @extend_schema_view(
            get=extend_schema(
                operation_id="invoices_list",
                summary="The tenant's finalized invoices and this month's draft",
                description="Finalized invoices, newest first, and this month's draft, each with "
                "links to its CSV, JSON and PDF downloads.",
                responses={
                    200: inline_serializer(
                        "InvoiceList",
                        {
                            "object": serializers.ChoiceField(choices=["list"]),
                            "data": invoice(many=True),
                            "draft": invoice(),
                        },
                    ),
                    **REFUSALS,
                },
            )
        )
        class Fixed(self.target_class):
            pass

        return Fixed


class InvoiceExportSchema(OpenApiViewExtension):
    target_class = "billing.api.InvoiceExportApi"

    def view_replacement(self):
        @extend_schema_view(
            get=extend_schema(
                operation_id="invoice_download",
                summary="One month's invoice as CSV, JSON or PDF (a draft if the month is open)",
                parameters=[
                    OpenApiParameter(
                        "period", str, OpenApiParameter.PATH, description="The month, YYYY-MM."
                    ),
                    OpenApiParameter(
                        "fmt",
                        str,
                        OpenApiParameter.PATH,
                        enum=list(exports.FORMATS),
                        description="The file format.",
                    ),
                ],
                responses={
                    (200, "text/csv"): FILE,
                    (200, "application/json"): OpenApiResponse(
                        OpenApiTypes.OBJECT, description="The invoice as JSON, as an attachment."
                    ),
                    (200, "application/pdf"): FILE,
                    (400, "application/json"): _error("Not a month as YYYY-MM (`invalid_period`)."),
                    (404, "application/json"): _error(
                        "Not a format of the API (`unknown_format`)."
                    ),
                    **{(status, "application/json"): r for status, r in REFUSALS.items()},
                },
            )
        )
        class Fixed(self.target_class):
            pass

        return Fixed


class UsageCsvSchema(OpenApiViewExtension):
    target_class = "billing.api.UsageCsvApi"

    def view_replacement(self):
        moment = "An ISO 8601 date and time with a time zone, e.g. 2026-11-01T00:00:00Z."

        @extend_schema_view(
            get=extend_schema(
                operation_id="usage_csv",
                summary="Per-request usage in [start, end) as CSV, streamed (default: this month)",
                parameters=[
                    OpenApiParameter("start", str, description=moment + " Needs `end`."),
                    OpenApiParameter("end", str, description=moment + " Needs `start`."),
                ],
                responses={
                    (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV rows."),
                    (400, "application/json"): _error(
                        "A bad or missing bound (`invalid_date_range`)."
                    ),
                    **{(status, "application/json"): r for status, r in REFUSALS.items()},
                },
            )
        )
        class Fixed(self.target_class):
            pass

        return Fixed


# Public: the schema describes the API, it holds no tenant's data.
schema_view = SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[AllowAny])
