"""The price book: which price applies to a tenant's use of a model at a moment."""

import time
from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from billing.models import Price
from saas_platform.threads import in_db_thread


def validate_price(
    *,
    input_per_million,
    output_per_million,
    cached_input_per_million=None,
    currency: str | None = None,
    effective_from: datetime | None = None,
) -> str:
    """The one validation of a price, used by `price_set` (the CLI) and the admin's form, so a
    row is refused with the same message wherever it is entered. Returns the currency as it is
    stored (upper case: invoices add up amounts of one currency, and "usd" is not "USD");
    raises ValidationError mapping each bad field to its message."""
    errors = {}
    amounts = (("input_per_million", input_per_million),
               ("output_per_million", output_per_million),
               ("cached_input_per_million", cached_input_per_million))  # fmt: skip
    for field, value in amounts:
        if field == "cached_input_per_million" and value is None:
            continue  # the input price applies
        if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
            errors[field] = "Prices must be decimal amounts of 0 or more."
    currency = (currency or settings.BILLING_CURRENCY).strip().upper()
    if len(currency) != 3 or not currency.isascii() or not currency.isalpha():
        errors["currency"] = "Currency must be a three-letter ISO code, e.g. USD."
    if effective_from is not None and timezone.is_naive(effective_from):
        errors["effective_from"] = "The start time needs a time zone (e.g. 2026-12-01T00:00Z)."
    if errors:
        raise ValidationError(errors)
    return currency


@transaction.atomic
def price_set(
    *,
    model_id: str,
    input_per_million: Decimal,
    output_per_million: Decimal,
    cached_input_per_million: Decimal | None = None,
    currency: str | None = None,
    tenant=None,
    effective_from: datetime | None = None,
) -> Price:
    """Add a price (list price, or the tenant's own) from `effective_from` (default now).
    Cached input tokens cost `cached_input_per_million` (default: the input price)."""
    currency = validate_price(
        input_per_million=input_per_million,
        output_per_million=output_per_million,
        cached_input_per_million=cached_input_per_million,
        currency=currency,
        effective_from=effective_from,
    )
    price = Price(
        model_id=model_id,
        tenant=tenant,
        currency=currency,
        input_per_million=input_per_million,
        output_per_million=output_per_million,
        cached_input_per_million=cached_input_per_million,
        effective_from=effective_from or timezone.now(),
    )
    price.full_clean()
    price.save()
    audit_record(
        action="price.set",
        obj=price,
        tenant=tenant,
        changes={
            field: (None, getattr(price, field))
            for field in (
                "model_id",
                "input_per_million",
                "output_per_million",
                "currency",
                "effective_from",
            )
        },
    )
    return price


class PriceBook:
    """Prices for a set of models, loaded once, answering `price_for(tenant, model, moment)`:
    the tenant's own latest price not after the moment, else the list price."""

    def __init__(self, model_ids):
        self._prices: dict[tuple, list[Price]] = defaultdict(list)
        for price in Price.objects.filter(model_id__in=set(model_ids)).order_by("-effective_from"):
            self._prices[(price.model_id, price.tenant_id)].append(price)

    def price_for(self, tenant_id: int, model_id: str, moment: datetime) -> Price | None:
        for key in ((model_id, tenant_id), (model_id, None)):
            for price in self._prices.get(key, ()):
                if price.effective_from <= moment:
                    return price
        return None


class _CurrentPrices:
    """Every price, kept per process for CATALOG_CACHE_SECONDS: admission prices each request's
    hold and settles its cost without a query."""

    def __init__(self):
        self.book: PriceBook | None = None
        self.loaded_at = float("-inf")

    def fresh(self) -> bool:
        return time.monotonic() - self.loaded_at <= settings.CATALOG_CACHE_SECONDS

    def load(self) -> PriceBook:
        if not self.fresh():
            self.book = PriceBook(Price.objects.values_list("model_id", flat=True).distinct())
            self.loaded_at = time.monotonic()
        return self.book


_current = _CurrentPrices()
_load_current = in_db_thread(_current.load)


async def aprice_now(tenant_id: int, model_id: str) -> Price | None:
    """The price of `model_id` for the tenant now (its own, else the list price; None: free),
    as the ledger will price a request made now."""
    book = _current.book if _current.fresh() else await _load_current()
    return book.price_for(tenant_id, model_id, timezone.now())
