"""The tenant-scoped billing API: invoices and usage by API key, each tenant seeing only its own,
with OpenAI-shaped refusals."""

import csv
import io
import json
import warnings
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from django.utils import timezone
from pypdf import PdfReader

from billing import exports
from billing.invoices import invoice_close, invoice_for
from billing.ledger import ledger_store
from billing.models import Invoice
from billing.pricing import price_set
from tenants import services
from tests.billing import factories

MARCH = date(2025, 3, 1)


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def event(tenant, request_id, model, when, prompt=1_000_000, completion=500_000):
    return factories.event(tenant, model=model, prompt=prompt, completion=completion, at=when,
                           request_id=request_id)  # fmt: skip


def this_month_start() -> datetime:
    now = timezone.now()
    return at(now.year, now.month, 1)


@pytest.fixture
def billed(acme, globex):
    """Both tenants used the platform in March 2025 (closed) and this month (a draft)."""
    price_set(
        model_id="llama-3-8b",
        input_per_million=Decimal("0.15"),
        output_per_million=Decimal("0.60"),
        effective_from=at(2020, 1, 1),
    )
    now = this_month_start() + timedelta(seconds=1)
    ledger_store(
        [
            event(acme, "acme-march", "llama-3-8b", at(2025, 3, 10)),
            event(acme, "acme-now", "llama-3-8b", now),
            event(globex, "globex-march", "globex-private", at(2025, 3, 11), prompt=7_000_000),
            event(globex, "globex-now", "globex-private", now),
        ]
    )
    return (invoice_close(tenant=acme, period=MARCH), invoice_close(tenant=globex, period=MARCH))


@pytest.fixture
def globex_key(globex):
    return services.apikey_issue(tenant=globex, name="ci")


@pytest.fixture
def get(client):
    def call(path, key, **params):
        return client.get(path, params, HTTP_AUTHORIZATION=f"Bearer {key.plaintext}")

    return call


def error_of(response, status):
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return error


def csv_rows(body: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body.decode())))


def test_invoice_list_has_the_tenants_finals_and_this_months_draft(billed, acme_key, get):
    acme_invoice, globex_invoice = billed

    response = get("/api/invoices", acme_key)

    assert response.status_code == 200
    body = response.json()
    assert [entry["number"] for entry in body["data"]] == [acme_invoice.number]
    assert body["data"][0] == {
        "number": acme_invoice.number,
        "status": "final",
        "period": "2025-03",
        "total": "0.45",
        "currency": "USD",
        "finalized_at": acme_invoice.finalized_at.isoformat().replace("+00:00", "Z"),
        "files": {fmt: f"/api/invoices/2025-03.{fmt}" for fmt in ("csv", "json", "pdf")},
    }
    draft = body["draft"]
    assert (draft["status"], draft["number"], draft["finalized_at"]) == ("draft", None, None)
    assert draft["period"] == f"{this_month_start():%Y-%m}"
    assert draft["total"] == "0.45"
    assert globex_invoice.number not in response.content.decode()


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("csv", "text/csv; charset=utf-8"),
        ("json", "application/json"),
        ("pdf", "application/pdf"),
    ],
)
def test_each_format_downloads_as_an_attachment(billed, acme, acme_key, get, fmt, content_type):
    data = invoice_for(acme, MARCH)

    response = get(f"/api/invoices/2025-03.{fmt}", acme_key)

    assert response.status_code == 200
    assert response["Content-Type"] == content_type
    assert response["Content-Disposition"] == (
        f'attachment; filename="acme-2025-03-{data.number}.{fmt}"'
    )
    if fmt == "pdf":
        text = PdfReader(io.BytesIO(response.content)).pages[0].extract_text()
        assert data.number in text
        assert "Total due: 0.45 USD" in text
    else:
        assert response.content == exports.EXPORTERS[fmt](data)


def test_a_pdf_download_with_an_accept_header_is_not_refused(billed, acme_key, client):
    response = client.get(
        "/api/invoices/2025-03.pdf",
        HTTP_ACCEPT="application/pdf",
        HTTP_AUTHORIZATION=f"Bearer {acme_key.plaintext}",
    )

    assert response.status_code == 200
    assert response.content.startswith(b"%PDF-")


def test_a_month_not_closed_downloads_as_a_draft(billed, acme_key, get):
    period = f"{this_month_start():%Y-%m}"

    response = get(f"/api/invoices/{period}.json", acme_key)

    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="acme-{period}-draft.json"'
    document = json.loads(response.content)
    assert document["invoice"]["status"] == "draft"
    assert [line["amount"] for line in document["lines"]] == ["0.45"]


def test_a_month_before_the_tenant_existed_is_an_empty_draft(billed, acme_key, get):
    response = get("/api/invoices/1999-01.csv", acme_key)

    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="acme-1999-01-draft.csv"'
    assert csv_rows(response.content) == []


def test_usage_csv_defaults_to_this_month(billed, acme_key, get):
    response = get("/api/usage.csv", acme_key)

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert [row["request_id"] for row in csv_rows(response.getvalue())] == ["acme-now"]


def test_usage_csv_for_a_range(billed, acme_key, get):
    response = get(
        "/api/usage.csv", acme_key, start="2025-03-01T00:00:00Z", end="2025-03-31T23:00:00-01:00"
    )

    rows = csv_rows(response.getvalue())
    assert [row["request_id"] for row in rows] == ["acme-march"]
    assert rows[0]["amount"] == "0.450000000000"
    assert response["Content-Disposition"] == (
        'attachment; filename="acme-usage-20250301T000000Z-20250401T000000Z.csv"'
    )


def test_usage_csv_streams_under_asgi_without_buffering(billed, acme_key):
    async def fetch():
        response = await AsyncClient().get(
            "/api/usage.csv",
            {"start": "2025-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z"},
            headers={"Authorization": f"Bearer {acme_key.plaintext}"},
        )
        # As Django's ASGI handler sends a body: through the response's __aiter__.
        return response, [chunk async for chunk in response]

    # Django warns (and reads everything into memory) when it has to list() a sync iterator.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        response, chunks = async_to_sync(fetch)()

    assert response.status_code == 200
    assert response.is_async
    rows = csv_rows(b"".join(chunks))
    assert [row["request_id"] for row in rows] == ["acme-march", "acme-now"]


def test_another_tenants_key_never_sees_acmes_invoices_or_usage(billed, globex_key, get):
    acme_invoice, globex_invoice = billed

    listing = get("/api/invoices", globex_key)
    download = get("/api/invoices/2025-03.csv", globex_key)
    usage = get(
        "/api/usage.csv", globex_key, start="2025-01-01T00:00:00Z", end="2099-01-01T00:00:00Z"
    )

    assert [entry["number"] for entry in listing.json()["data"]] == [globex_invoice.number]
    assert acme_invoice.number not in listing.content.decode()
    rows = csv_rows(download.content)
    assert {(row["invoice_number"], row["tenant"], row["model"]) for row in rows} == {
        (globex_invoice.number, "globex", "globex-private")
    }
    usage_ids = [row["request_id"] for row in csv_rows(usage.getvalue())]
    assert usage_ids == ["globex-march", "globex-now"]
    # acme's invoice is still there, untouched, for acme.
    assert Invoice.objects.get(pk=acme_invoice.pk).tenant.slug == "acme"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer sk-not-a-real-key",
        "Basic dXNlcjpwdw==",
        "Bearer sk-AbC12345" + "a" * 44 + "000000",
    ],
)
def test_a_bad_or_missing_key_gets_401(billed, client, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}

    response = client.get("/api/invoices", **extra)

    error = error_of(response, 401)
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"acme" not in response.content


def test_a_revoked_key_gets_401(billed, acme_key, get):
    services.apikey_revoke(api_key=acme_key.api_key)

    error = error_of(get("/api/usage.csv", acme_key), 401)

    assert "revoked" in error["message"]


def test_a_suspended_tenants_key_gets_403(billed, acme, acme_key, get):
    services.tenant_suspend(tenant=acme)

    for path in ("/api/invoices", "/api/invoices/2025-03.pdf", "/api/usage.csv"):
        error = error_of(get(path, acme_key), 403)
        assert error["code"] == "tenant_suspended"


def test_a_staff_session_is_not_a_key(billed, admin_client):
    error = error_of(admin_client.get("/api/invoices"), 401)

    assert error["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "period", ["2025-13", "2025-3", "25-03", "march", "2025-03-01", "9999-12", "0000-01"]
)
def test_a_bad_period_gets_400(billed, acme_key, get, period):
    error = error_of(get(f"/api/invoices/{period}.csv", acme_key), 400)

    assert (error["code"], error["param"]) == ("invalid_period", "period")


def test_an_unknown_format_gets_404(billed, acme_key, get):
    error = error_of(get("/api/invoices/2025-03.xlsx", acme_key), 404)

    assert error["code"] == "unknown_format"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "2025-03-01T00:00:00Z"}, "end"),
        ({"end": "2025-03-01T00:00:00Z"}, "start"),
        ({"start": "yesterday", "end": "2025-03-01T00:00:00Z"}, "start"),
        ({"start": "", "end": "2025-03-01T00:00:00Z"}, "start"),
        ({"start": "2025-03-01T00:00:00", "end": "2025-04-01T00:00:00Z"}, "start"),
        ({"start": "2025-03-01T00:00:00Z", "end": "2025-04-01"}, "end"),
        ({"start": "2025-04-01T00:00:00Z", "end": "2025-03-01T00:00:00Z"}, "end"),
        ({"start": "2025-04-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"}, "end"),
        ({"start": "0001-01-01T00:00:00+01:00", "end": "2025-04-01T00:00:00Z"}, "start"),
    ],
)
def test_bad_usage_dates_get_400(billed, acme_key, get, params, param):
    error = error_of(get("/api/usage.csv", acme_key, **params), 400)

    assert (error["code"], error["param"]) == ("invalid_date_range", param)


def test_other_methods_are_refused_in_openai_shape(billed, acme_key, client):
    response = client.post("/api/invoices", HTTP_AUTHORIZATION=f"Bearer {acme_key.plaintext}")

    error = error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert Invoice.objects.count() == 2  # nothing was created


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/api/usage.csv", {"strat": "2025-03-01T00:00:00Z"}, "strat"),
        ("/api/invoices", {"page": "2"}, "page"),
        ("/api/invoices/2025-03.csv", {"download": "1"}, "download"),
    ],
)
def test_an_unknown_query_parameter_is_a_400_naming_it(billed, acme_key, get, path, params, named):
    error = error_of(get(path, acme_key, **params), 400)
    assert error["code"] == "unknown_parameter"
    assert error["param"] == named
    assert repr(named) in error["message"]
