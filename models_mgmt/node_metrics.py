"""Prometheus figures of the nodes, read from the database when /metrics is scraped (named in
METRICS_COLLECTORS): any server shows every node, though only node workers change them."""

from prometheus_client.core import GaugeMetricFamily

from models_mgmt.selectors import node_memory


def node_memory_collector():
    used = GaugeMetricFamily(
        "models_node_used_bytes",
        "Bytes declared by the models holding memory, per node",
        labels=["node"],
    )
    budget = GaugeMetricFamily(
        "models_node_budget_bytes", "Each node's memory budget in bytes", labels=["node"]
    )
    for row in node_memory():
        used.add_metric([row.node], row.used_bytes)
        budget.add_metric([row.node], row.budget_bytes)
    yield used
    yield budget
