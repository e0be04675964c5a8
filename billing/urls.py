"""The tenant-scoped billing API, mounted under /api/ (see billing.api)."""

from django.urls import path, re_path

from billing import api, api_schema

app_name = "billing"

urlpatterns = [
    path("invoices", api.InvoiceListApi.as_view(), name="invoice-list"),
    # Anything before the last dot is the period and anything after it the format, so a bad
    # one gets the API's own 400/404 (OpenAI-shaped) rather than a bare URL miss.
    re_path(
        r"^invoices/(?P<period>[^/]+)\.(?P<fmt>[^/.]+)$",
        api.InvoiceExportApi.as_view(),
        name="invoice-export",
    ),
    path("usage.csv", api.UsageCsvApi.as_view(), name="usage-csv"),
    path("schema", api_schema.schema_view, name="schema"),
]
