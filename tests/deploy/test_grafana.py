"""deploy/grafana/platform.json: every metric a panel queries is one that a running server's
/metrics really exports (read after some traffic), and the dashboard covers what the product
exports: requests, latency, refusals, admission backend errors, engine errors, cold-start waits,
the fair queue's depth and waits,
node memory against budget, loads and evictions, and the ledger's lag."""

import json
import re

import httpx

from tests.conftest import ROOT
from tests.gateway_server import gateway_env, make_customer
from tests.metrics import samples, scrape
from tests.servers import free_port, gateway_command, running

DASHBOARD = ROOT / "deploy" / "grafana" / "platform.json"
HI = [{"role": "user", "content": "hi"}]

# What the panels must show, by the metric that carries it.
COVERED = {
    "gateway_requests_total",
    "gateway_request_seconds_bucket",
    "gateway_refusals_total",
    "gateway_admission_backend_errors_total",
    "gateway_upstream_errors_total",
    "gateway_cold_start_wait_seconds_bucket",
    "gateway_queue_depth",
    "gateway_queue_wait_seconds_bucket",
    "models_node_used_bytes",
    "models_node_budget_bytes",
    "models_loads_total",
    "models_evictions_total",
    "billing_ledger_oldest_unstored_seconds",
    "billing_ledger_stream_length",
    "billing_ledger_events_stored_total",
    "billing_ledger_last_drain_timestamp_seconds",
}

# PromQL words that are not metric names (functions are told apart by their parenthesis).
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations ($__rate_interval too)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group().lower() in KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(match.group())
    return names


def exported_names(text: str) -> set[str]:
    """The sample names a /metrics page declares (# TYPE), histograms with their series."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return [p for p in panels if p["type"] != "row"]


def test_metric_names_are_read_from_promql():
    expr = (
        "histogram_quantile(0.99, sum by (le, endpoint) (rate(gateway_request_seconds_bucket"
        '{endpoint="chat", status!~"5.."}[$__rate_interval]))) / on (node) group_left '
        "max(models_node_budget_bytes offset 5m) > bool 0 and time() - up"
    )

    assert metric_names(expr) == {
        "gateway_request_seconds_bucket",
        "models_node_budget_bytes",
        "up",
    }


def test_every_panel_queries_metrics_that_metrics_exports(gateway, catalog):
    customer = make_customer(gateway, max_tokens_per_minute=100)
    client = customer.client()
    client.chat.completions.create(model="fake", messages=HI, max_tokens=5)
    refused = httpx.post(
        f"{customer.base_url}/chat/completions",
        json={"model": "fake", "messages": HI, "max_tokens": 1000},
        headers={"Authorization": f"Bearer {customer.key}"},
    )
    unknown = httpx.post(
        f"{customer.base_url}/chat/completions",
        json={},
        headers={"Authorization": "Bearer sk-nope"},
    )
    text = scrape(gateway.url)
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names(text)

    queried = {}
    for panel in _panels(dashboard):
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in metric_names(target["expr"]):
                queried.setdefault(name, set()).add(panel["title"])

    assert refused.status_code == 429
    assert unknown.status_code == 401
    assert {n for n, _labels in samples(text)} >= {
        "gateway_requests_total",
        "gateway_refusals_total",
    }
    assert {name: titles for name, titles in queried.items() if name not in exported} == {}
    assert set(queried) >= COVERED
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_in_multiprocess_mode_metrics_sums_the_processes_and_keeps_the_platforms_figures(
    gateway, catalog, tmp_path
):
    customer = make_customer(gateway)
    port = free_port()
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = gateway_env(PROMETHEUS_MULTIPROC_DIR=str(folder))  # as platform-gateway.service runs
    base = f"http://127.0.0.1:{port}"
    with running(gateway_command(port, workers=2), env=env, ready_url=f"{base}/healthz"):
        for _ in range(8):  # new connections: uvicorn's processes take them in turn
            response = httpx.post(
                f"{base}/v1/chat/completions",
                json={"model": "fake", "messages": HI},
                headers={"Authorization": f"Bearer {customer.key}"},
            )
            assert response.status_code == 200
        text = scrape(base)
    found = samples(text)
    answered = sum(
        v
        for (name, labels), v in found.items()
        if name == "gateway_requests_total" and ("status", "200") in labels
    )

    assert answered == 8
    assert exported_names(text) >= {
        "gateway_request_seconds_bucket",
        "billing_ledger_stream_length",
        "billing_ledger_oldest_unstored_seconds",
        "billing_ledger_events_stored_total",
        "models_node_used_bytes",
        "models_loads_total",
    }
