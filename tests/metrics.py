"""Reading a /metrics page as Prometheus would."""

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(base_url: str) -> str:
    response = httpx.get(f"{base_url}/metrics", timeout=30)
    response.raise_for_status()
    return response.text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, for every sample on the page."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value; 0 when the page has no such sample (a counter not counted yet)."""
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)
