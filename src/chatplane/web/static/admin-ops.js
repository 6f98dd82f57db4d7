// Operations (superadmins): the live dashboard of the whole deployment, from
// GET /api/ops/live (server-sent events). Tiles say their value and state in words; the
// colour only repeats it. Charts are small hand-drawn SVG lines of the recent history.

import { badge, card, cardHead, pageHeader } from "./admin-ui.js";
import { el } from "./ui.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const STATE_TEXT = { ok: "OK", warning: "Warning", critical: "Critical", unknown: "No data" };
const STATE_TONE = { ok: "success", warning: "warn", critical: "danger", unknown: "neutral" };
const CHARTS = [
  { key: "requests_per_s", title: "Requests per second", unit: "/s" },
  { key: "latency_p95_s", title: "p95 latency", unit: "s" },
  { key: "error_rate", title: "Error rate (5xx)", unit: "ratio" },
  { key: "first_token_p95_s", title: "First token p95", unit: "s" },
  { key: "open_streams", title: "Open streams", unit: "" },
  { key: "queue_depth", title: "Queue depth", unit: "" },
];
const CHART_W = 320;
const CHART_H = 96;

/** A value as people read it: 0.0123 ratio -> "1.23 %", 0.042 s -> "42 ms". */
export function formatValue(value, unit) {
  if (value === null || value === undefined) return "–";
  if (unit === "ratio") return `${(value * 100).toFixed(value < 0.1 ? 2 : 1)} %`;
  if (unit === "s") return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
  const number = Math.abs(value) >= 100 || Number.isInteger(value) ? Math.round(value).toLocaleString() : value.toFixed(2);
  return unit === "/s" || unit === "/min" ? `${number} ${unit}` : number;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

/** One tile: label, value, state in words (and colour), thresholds in the title. */
function tileNode(tile) {
  const state = STATE_TEXT[tile.state] || tile.state;
  return el(
    "div",
    {
      class: `ops-tile ops-${tile.state}`,
      role: "group",
      "aria-label": `${tile.label}: ${formatValue(tile.value, tile.unit)}, ${state}`,
      title: `Warning from ${formatValue(tile.warning, tile.unit)}, critical from ${formatValue(tile.critical, tile.unit)}`,
      dataset: { tile: tile.key, state: tile.state },
    },
    el("span", { class: "ops-tile-label" }, tile.label),
    el("span", { class: "ops-tile-value" }, formatValue(tile.value, tile.unit)),
    badge(state, STATE_TONE[tile.state] || "neutral"),
  );
}

/** A line chart of [time, value] points, with its latest value and the warning line. */
function chartNode(spec, points, tile) {
  const values = points.map(([, v]) => v).filter((v) => v !== null && v !== undefined);
  const top = Math.max(1e-9, ...values) * 1.2; // headroom above the highest point
  const times = points.map(([t]) => t);
  const t0 = times[0] ?? 0;
  const span = Math.max(1, (times[times.length - 1] ?? 1) - t0);
  const x = (t) => ((t - t0) / span) * CHART_W;
  const y = (v) => CHART_H - 4 - (v / top) * (CHART_H - 8);
  const chart = svg("svg", {
    viewBox: `0 0 ${CHART_W} ${CHART_H}`,
    class: "ops-chart-svg",
    role: "img",
    preserveAspectRatio: "none",
    "aria-label": `${spec.title}, last ${Math.round(span / 60) || 1} min, now ${formatValue(values[values.length - 1], spec.unit)}`,
  });
  chart.append(svg("line", { x1: 0, y1: CHART_H - 4, x2: CHART_W, y2: CHART_H - 4, class: "ops-axis" }));
  if (tile && tile.warning > 0 && tile.warning <= top) {
    chart.append(svg("line", { x1: 0, y1: y(tile.warning), x2: CHART_W, y2: y(tile.warning), class: "ops-warning-line" }));
  }
  let path = "";
  for (const [t, v] of points) {
    if (v === null || v === undefined) continue;
    path += `${path ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
  }
  if (path) {
    const area = `${path}L${x(times[times.length - 1]).toFixed(1)},${CHART_H - 4}L${x(points.find(([, v]) => v !== null)[0]).toFixed(1)},${CHART_H - 4}Z`;
    chart.append(svg("path", { d: area, class: "ops-area" }));
    chart.append(svg("path", { d: path, class: "ops-line" }));
  }
  return el(
    "figure",
    { class: "ops-chart", dataset: { chart: spec.key, points: String(values.length) } },
    el(
      "figcaption",
      {},
      el("span", {}, spec.title),
      el("strong", { class: "ops-chart-now" }, formatValue(values[values.length - 1], spec.unit)),
    ),
    chart,
  );
}

class OpsView {
  constructor(root) {
    this.root = root;
    this.source = null;
    this.frames = 0;
    this.status = el("p", { id: "ops-status", class: "ops-status", role: "status" }, "Connecting…");
    this.tiles = el("div", { id: "ops-tiles", class: "ops-tiles" });
    this.charts = el("div", { id: "ops-charts", class: "ops-charts" });
    this.meta = el("p", { class: "ops-meta" });
  }

  start() {
    this.root.append(
      pageHeader({
        title: "Operations",
        description: "The whole deployment, live: every API process and worker, summed. Rates and p95 cover the window named at the bottom.",
      }),
      this.status,
      this.tiles,
      card(cardHead("Recent history", "Each point is one frame of the live stream; the dashed line is the warning threshold."), this.charts),
      this.meta,
    );
    this.connect();
  }

  connect() {
    // EventSource reconnects by itself (the server says after how long); it sends the
    // session cookie, which is how the operations API knows a superadmin.
    this.source = new EventSource("/api/ops/live");
    this.source.addEventListener("dashboard", (event) => {
      if (!this.root.isConnected) return this.stop(); // another page was opened
      this.show(JSON.parse(event.data));
    });
    this.source.addEventListener("error", () => {
      if (!this.root.isConnected) return this.stop();
      this.status.textContent = "Connection lost; reconnecting…";
      this.status.dataset.live = "no";
    });
    window.addEventListener("hashchange", () => this.stop(), { once: true });
  }

  stop() {
    this.source?.close();
    this.source = null;
  }

  show(frame) {
    this.frames += 1;
    const time = new Date(frame.time).toLocaleTimeString();
    this.status.textContent = `Live · updated ${time}`;
    this.status.dataset.live = "yes";
    this.root.dataset.frames = String(this.frames);
    this.tiles.replaceChildren(...frame.tiles.map(tileNode));
    const byKey = Object.fromEntries(frame.tiles.map((tile) => [tile.key, tile]));
    this.charts.replaceChildren(...CHARTS.map((spec) => chartNode(spec, frame.history[spec.key] || [], byKey[spec.key])));
    const window = frame.window_s ? `rates over ${Math.round(frame.window_s)} s` : "rates need a second sample";
    const totals = frame.totals;
    const turns = Object.entries(totals.turns)
      .map(([outcome, n]) => `${Math.round(n)} ${outcome}`)
      .join(", ");
    this.meta.textContent =
      `${frame.processes} live process${frame.processes === 1 ? "" : "es"} · ${window} · ` +
      `since start: ${Math.round(totals.requests)} requests, ${Math.round(totals.messages)} messages, ` +
      `turns ${turns || "none"}, ${Math.round(totals.provider_errors)} provider errors · ` +
      `${Math.round(frame.websockets.connections)} WebSockets` +
      (frame.errors.length ? ` · not read: ${frame.errors.join("; ")}` : "");
  }
}

export const opsPage = {
  title: "Operations",
  access: "superadmin",
  render(root) {
    new OpsView(root).start();
  },
};
