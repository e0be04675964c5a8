"""The one rounding rule: amounts are exact Decimals until an invoice line, which is rounded
once to the currency's minor unit, half up (0.005 -> 0.01). Ledger amounts keep 12 places."""

from decimal import ROUND_HALF_UP, Decimal

MILLION = Decimal(1_000_000)
LEDGER_PLACES = Decimal("0.000000000001")
# Minor units of the currencies an operator is likely to bill in; others default to 2.
MINOR_UNITS = {"JPY": 0, "KRW": 0, "BHD": 3, "KWD": 3}


def usage_amount(prompt_tokens: int, completion_tokens: int, price, cached_tokens: int = 0):
    """The exact (unrounded) cost of one request at `price` (None: an unpriced model, free).
    `cached_tokens` of the prompt tokens are priced at the price's cached input price."""
    if price is None:
        return Decimal(0)
    amount = prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million
    if cached_tokens:
        amount += cached_tokens * (price.cached_price - price.input_per_million)
    return (amount / MILLION).quantize(LEDGER_PLACES)


def cached_amount(cached_tokens: int, price) -> Decimal:
    """The exact cost of `cached_tokens` cached input tokens at `price`: an invoice's cached
    line (the rest of the usage's amount is its usage line)."""
    if price is None:
        return Decimal(0)
    return (cached_tokens * price.cached_price / MILLION).quantize(LEDGER_PLACES)


def round_line(amount: Decimal, currency: str) -> Decimal:
    places = MINOR_UNITS.get(currency.upper(), 2)
    return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


PICOS = Decimal(10) ** 12  # ledger amounts have 12 places: a whole number of picos


def to_picos(amount: Decimal) -> int:
    """An amount in whole 10^-12 of the currency, exactly (the ledger's places), for the running
    spend, holds and credit balances kept next to admission in Redis."""
    return int((amount.quantize(LEDGER_PLACES) * PICOS).to_integral_value())


def from_picos(picos: int) -> Decimal:
    return (Decimal(picos) / PICOS).quantize(LEDGER_PLACES)
