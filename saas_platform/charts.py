"""Chart specs for the admin and the portal: plain data that charts.js draws with Chart.js and
the template repeats as a table, so every chart can also be read without a canvas."""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from saas_platform.periods import days_of


@dataclass
class Chart:
    title: str
    labels: list[str]
    series: dict[str, list[int | float]] = field(default_factory=dict)
    kind: str = "bar"
    unit: str = ""
    stacked: bool = True

    @property
    def is_empty(self) -> bool:
        return not any(value for values in self.series.values() for value in values)

    def as_spec(self) -> dict:
        return {
            "kind": self.kind,
            "unit": self.unit,
            "stacked": self.stacked,
            "labels": self.labels,
            "datasets": [{"label": name, "data": data} for name, data in self.series.items()],
        }

    def rows(self) -> list[tuple[str, list[int | float]]]:
        """The chart as table rows: one per label, a value per series."""
        return [
            (label, [data[i] for data in self.series.values()])
            for i, label in enumerate(self.labels)
        ]


def days_between(first: date, last: date) -> list[date]:
    return days_of(first, last)


def daily_chart(
    title: str, points: Iterable[tuple[date, str, int | float]], first: date, last: date,
    *, unit: str = "tokens", top: int = 8,
) -> Chart:  # fmt: skip
    """One bar per day from `first` to `last`, stacked by series name (a model, a tenant).
    Beyond the `top` largest series, the rest are summed as "other" so the legend stays legible.
    """
    days = days_between(first, last)
    index = {day: n for n, day in enumerate(days)}
    by_series: dict[str, list[int | float]] = defaultdict(lambda: [0] * len(days))
    for day, name, value in points:
        if day in index:
            by_series[name][index[day]] += value
    ranked = sorted(by_series, key=lambda name: -sum(by_series[name]))
    series = {name: by_series[name] for name in ranked[:top]}
    if len(ranked) > top:
        series["other"] = [sum(by_series[n][i] for n in ranked[top:]) for i in range(len(days))]
    labels = [day.isoformat() for day in days]
    return Chart(title=title, labels=labels, series=series, unit=unit)


def ranking_chart(title: str, items: Iterable[tuple[str, int | float]], *, unit: str) -> Chart:
    """A horizontal bar per item (top tenants, refusals by reason), largest first."""
    ordered = sorted(items, key=lambda item: -item[1])
    return Chart(
        title=title, labels=[name for name, _ in ordered],
        series={unit: [value for _, value in ordered]}, kind="hbar", unit=unit, stacked=False,
    )  # fmt: skip
