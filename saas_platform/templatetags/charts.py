from django import template

from saas_platform.charts import Chart

register = template.Library()


@register.inclusion_tag("charts/chart.html")
def chart(chart: Chart, chart_id: str, empty: str = "No usage in this period yet."):
    """A Chart.js canvas with its data as a table beside it (screen readers, no JavaScript)."""
    return {"chart": chart, "chart_id": chart_id, "spec_id": f"{chart_id}-spec", "empty": empty}
