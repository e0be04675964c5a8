"""Months and days, all in UTC: the one place their arithmetic is written. Invoices, spend,
admission, the portal and the admin use it. A period is a month named by its first day (a
`date`); a range of days is half-open, [first day's 00:00, the day after the last's 00:00)."""

import calendar
import time
from datetime import UTC, date, datetime, timedelta

from django.utils import timezone


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
    """The first day of the month after `period`'s (OverflowError after December 9999)."""
    days = calendar.monthrange(period.year, period.month)[1]
    return date.fromordinal(period.replace(day=1).toordinal() + days)


def previous_month(period: date) -> date:
    return date.fromordinal(period.replace(day=1).toordinal() - 1).replace(day=1)


def last_month(moment: datetime | None = None) -> date:
    """The month before the one of `moment` (default now)."""
    return previous_month(month_start(moment))


def month_last_day(period: date) -> date:
    return next_month(period) - timedelta(days=1)


def day_start(day: date) -> datetime:
    """00:00 UTC of `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def day_range(first: date, last: date) -> tuple[datetime, datetime]:
    """The moments from `first` to `last`, both days included: [first 00:00, last + 1 00:00)."""
    return day_start(first), day_start(last) + timedelta(days=1)


def month_range(period: date) -> tuple[datetime, datetime]:
    """The moments of `period`'s month: [its first day 00:00, the next month's 00:00)."""
    return day_start(period), day_start(next_month(period))


def days_of(first: date, last: date) -> list[date]:
    """Every day from `first` to `last`, both included."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def last_days(days: int, *, today: date | None = None) -> tuple[date, date]:
    """The first and last day of the `days` days ending today (UTC)."""
    today = today or timezone.now().astimezone(UTC).date()
    return today - timedelta(days=days - 1), today


def month_key(moment: datetime | None = None) -> str:
    """`YYYY-MM` of `moment` (aware), or of now: admission's key on every request, so now is
    read from the clock directly rather than through Django's timezone."""
    if moment is None:
        return time.strftime("%Y-%m", time.gmtime())
    return moment.astimezone(UTC).strftime("%Y-%m")


def seconds_to_next_month() -> int:
    """Whole seconds until the next month starts (at least 1), from the clock directly."""
    now = time.gmtime()
    year, month = (now.tm_year + 1, 1) if now.tm_mon == 12 else (now.tm_year, now.tm_mon + 1)
    return max(1, int(calendar.timegm((year, month, 1, 0, 0, 0)) - time.time()))
