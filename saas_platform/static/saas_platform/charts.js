// Draws every <canvas data-chart="spec-id"> from its json_script spec (saas_platform/charts.py),
// on load and again after htmx swaps a fragment in.
(function () {
  "use strict";
  const palette = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4b5563", "#db2777", "#65a30d"];
  const number = new Intl.NumberFormat();

  function draw(canvas) {
    if (canvas.dataset.drawn) return;
    const spec = JSON.parse(document.getElementById(canvas.dataset.chart).textContent);
    const horizontal = spec.kind === "hbar";
    canvas.dataset.drawn = "1";
    new Chart(canvas, {
      type: spec.kind === "line" ? "line" : "bar",
      data: {
        labels: spec.labels,
        datasets: spec.datasets.map((set, i) => ({
          label: set.label, data: set.data, backgroundColor: palette[i % palette.length],
          borderColor: palette[i % palette.length],
        })),
      },
      options: {
        indexAxis: horizontal ? "y" : "x",
        maintainAspectRatio: false,
        animation: false,
        plugins: {
          legend: { display: spec.kind !== "hbar", position: "bottom" },
          tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${number.format(c.raw)} ${spec.unit}` } },
        },
        scales: {
          [horizontal ? "y" : "x"]: { stacked: spec.stacked, ticks: { autoSkip: true, maxRotation: 0 } },
          [horizontal ? "x" : "y"]: { stacked: spec.stacked, beginAtZero: true, ticks: { callback: (v) => number.format(v) } },
        },
      },
    });
  }

  function drawAll(root) {
    (root || document).querySelectorAll("canvas[data-chart]").forEach(draw);
  }
  document.addEventListener("DOMContentLoaded", () => drawAll());
  document.addEventListener("htmx:afterSettle", (event) => drawAll(event.target));
})();
