// Usage and cost: the organisation's (every tenant's for an operator) by day, model, user or
// key, with a bar chart drawn as SVG here, and "My usage" for the account page.

import { request } from "./api.js";
import { adminApi } from "./admin-api.js";
import { aicon, card, cardHead, dataTable, emptyState, loading, mono, muted, pageHeader } from "./admin-ui.js";
import { el, toastError } from "./ui.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const DAY_MS = 86_400_000;

const RANGES = [
  ["7", "Last 7 days"],
  ["30", "Last 30 days"],
  ["90", "Last 90 days"],
  ["month", "This month"],
  ["custom", "Custom"],
];

const BREAKDOWNS = [
  ["model", "Model"],
  ["user", "User"],
  ["key", "API key"],
  ["source", "Source"],
];

const SOURCE_NAMES = { chat: "Chat", gateway: "API (/v1)" };

export const usageApi = {
  report: (params) => request("GET", `/api/admin/usage${query(params)}`),
  own: (params) => request("GET", `/api/usage${query(params)}`),
  csvUrl: (params) => `/api/admin/usage.csv${query(params)}`,
};

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// ---------------------------------------------------------------- numbers and days (UTC)

export function usd(value) {
  const amount = Number(value || 0);
  const digits = amount !== 0 && Math.abs(amount) < 1 ? 4 : 2;
  return `$${amount.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: digits })}`;
}

function plural(n, word) {
  return `${count(n)} ${word}${Number(n) === 1 ? "" : "s"}`;
}

export function count(value) {
  return Number(value || 0).toLocaleString();
}

/** 1234567 -> "1.2M": for axis labels and tiles. */
function compact(value) {
  return Number(value || 0).toLocaleString(undefined, { notation: "compact", maximumFractionDigits: 1 });
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function todayUtc() {
  return isoDay(new Date());
}

function addDays(day, days) {
  return isoDay(new Date(Date.parse(`${day}T00:00:00Z`) + days * DAY_MS));
}

function monthStart(day) {
  return `${day.slice(0, 8)}01`;
}

function rangeFor(choice) {
  const today = todayUtc();
  if (choice === "month") return { from: monthStart(today), to: today };
  return { from: addDays(today, 1 - Number(choice)), to: today };
}

function daysBetween(from, to) {
  const days = [];
  for (let day = from; day <= to && days.length < 400; day = addDays(day, 1)) days.push(day);
  return days;
}

function dayLabel(day, { long = false } = {}) {
  const date = new Date(`${day}T00:00:00Z`);
  const options = long ? { dateStyle: "medium", timeZone: "UTC" } : { month: "short", day: "numeric", timeZone: "UTC" };
  return date.toLocaleDateString([], options);
}

// ---------------------------------------------------------------- the chart

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A rounded-up axis maximum: 1, 2, 2.5 or 5 times a power of ten. */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

/**
 * Bars per day, as an SVG sized to its container: `series` is [{day, value}] for every day of
 * the range; `format` writes a value for the axis and the tooltips. Colours come from CSS.
 */
export function barChart(series, { width, height, format, label }) {
  const pad = { top: 12, right: 8, bottom: 26, left: 52 };
  const plotW = Math.max(40, width - pad.left - pad.right);
  const plotH = Math.max(40, height - pad.top - pad.bottom);
  const max = niceMax(Math.max(0, ...series.map((point) => point.value)));
  const slot = plotW / Math.max(1, series.length);
  const barW = Math.max(1, Math.min(28, slot * 0.72));
  const y = (value) => pad.top + plotH - (value / max) * plotH;

  const grid = [0, 0.5, 1].map((fraction) => {
    const value = max * fraction;
    return svg(
      "g",
      { class: "usg-grid" },
      svg("line", { x1: pad.left, x2: pad.left + plotW, y1: y(value), y2: y(value) }),
      svg("text", { x: pad.left - 8, y: y(value) + 4, class: "usg-axis usg-axis-y", "text-anchor": "end" }, format(value, true)),
    );
  });

  const bars = series.map((point, i) => {
    const top = y(point.value);
    const h = Math.max(point.value > 0 ? 1.5 : 0, pad.top + plotH - top);
    return svg(
      "rect",
      {
        class: point.value > 0 ? "usg-bar" : "usg-bar usg-bar-empty",
        x: (pad.left + i * slot + (slot - barW) / 2).toFixed(2),
        y: (pad.top + plotH - h).toFixed(2),
        width: barW.toFixed(2),
        height: h.toFixed(2),
        rx: Math.min(3, barW / 3).toFixed(2),
        "data-day": point.day,
      },
      svg("title", {}, `${dayLabel(point.day, { long: true })}: ${format(point.value, false)}`),
    );
  });

  // Day labels: as many as fit without overlapping, always the first and the last.
  const every = Math.max(1, Math.ceil(series.length / Math.max(1, Math.floor(plotW / 64))));
  const ticks = series
    .map((point, i) => ({ point, i }))
    .filter(({ i }) => i % every === 0 || i === series.length - 1)
    .filter(({ i }) => i === 0 || i === series.length - 1 || series.length - 1 - i >= every)
    .map(({ point, i }) =>
      svg(
        "text",
        {
          x: (pad.left + i * slot + slot / 2).toFixed(2),
          y: height - 8,
          class: "usg-axis usg-axis-x",
          "text-anchor": series.length === 1 ? "middle" : i === 0 ? "start" : i === series.length - 1 ? "end" : "middle",
        },
        dayLabel(point.day),
      ),
    );

  return svg(
    "svg",
    {
      class: "usg-chart-svg",
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": label,
    },
    grid,
    svg("line", { class: "usg-baseline", x1: pad.left, x2: pad.left + plotW, y1: pad.top + plotH, y2: pad.top + plotH }),
    bars,
    ticks,
  );
}

// ---------------------------------------------------------------- tiles

function tile(labelText, value, { id, hint } = {}) {
  return el(
    "div",
    { class: "usg-tile", id },
    el("p", { class: "usg-tile-label" }, labelText),
    el("p", { class: "usg-tile-value" }, value),
    hint ? el("p", { class: "usg-tile-hint" }, hint) : null,
  );
}

/** "132.1K" with the exact number under it (only when they differ). */
function tokenTile(labelText, value, id) {
  const short = compact(value);
  const exact = count(value);
  return tile(labelText, short, { id, hint: short === exact ? null : exact });
}

function tiles(totals, { idPrefix = "usage" } = {}) {
  return el(
    "div",
    { class: "usg-tiles" },
    tile("Cost", usd(totals.cost_usd), { id: `${idPrefix}-total-cost` }),
    tile("Requests", count(totals.requests), { id: `${idPrefix}-total-requests` }),
    tokenTile("Prompt tokens", totals.prompt_tokens, `${idPrefix}-total-prompt`),
    tokenTile("Completion tokens", totals.completion_tokens, `${idPrefix}-total-completion`),
  );
}

// ---------------------------------------------------------------- the page

export const usagePage = {
  title: "Usage",
  access: "admin",
  render(root, ctx) {
    new UsageView(root, ctx).start();
  },
};

class UsageView {
  constructor(root, ctx) {
    this.root = root;
    this.ctx = ctx;
    this.range = rangeFor("30");
    this.breakdown = "model";
    this.metric = "cost";
    this.tenantId = "";
    this.daily = null;
    this.seq = 0;
  }

  start() {
    const ctx = this.ctx;
    this.rangeSelect = select("usage-range", "Date range", RANGES, "30");
    this.fromInput = el("input", { id: "usage-from", class: "usg-date", type: "date", "aria-label": "From (UTC)", required: true });
    this.toInput = el("input", { id: "usage-to", class: "usg-date", type: "date", "aria-label": "To (UTC)", required: true });
    this.fromInput.value = this.range.from;
    this.toInput.value = this.range.to;
    this.custom = el("div", { class: "usg-custom", hidden: true }, this.fromInput, el("span", { class: "adm-muted" }, "to"), this.toInput);
    const breakdowns = ctx.isSuperadmin ? [["tenant", "Tenant"], ...BREAKDOWNS] : BREAKDOWNS;
    this.breakdownSelect = select("usage-group", "Break down by", breakdowns, this.breakdown);
    this.tenantSelect = ctx.isSuperadmin ? select("usage-tenant", "Tenant", [["", "All tenants"]], "") : null;
    this.csv = el(
      "a",
      { id: "usage-csv", class: "btn btn-outline", href: "#", download: "" },
      aicon("download"),
      "Download CSV",
    );

    this.rangeSelect.addEventListener("change", () => {
      const choice = this.rangeSelect.value;
      this.custom.hidden = choice !== "custom";
      if (choice !== "custom") {
        this.range = rangeFor(choice);
        this.fromInput.value = this.range.from;
        this.toInput.value = this.range.to;
        this.load();
      }
    });
    for (const input of [this.fromInput, this.toInput]) {
      input.addEventListener("change", () => {
        if (!this.fromInput.value || !this.toInput.value) return;
        this.range = { from: this.fromInput.value, to: this.toInput.value };
        this.load();
      });
    }
    this.breakdownSelect.addEventListener("change", () => {
      this.breakdown = this.breakdownSelect.value;
      this.loadBreakdown();
    });
    this.tenantSelect?.addEventListener("change", () => {
      this.tenantId = this.tenantSelect.value;
      this.load();
    });

    this.summary = el("div", { class: "usg-summary" }, loading());
    this.metricButtons = el(
      "div",
      { class: "usg-toggle", role: "group", "aria-label": "Chart shows" },
      ["cost", "tokens"].map((metric) =>
        el(
          "button",
          {
            class: "btn btn-sm usg-toggle-btn",
            type: "button",
            dataset: { metric },
            "aria-pressed": String(metric === this.metric),
            onclick: () => this.setMetric(metric),
          },
          metric === "cost" ? "Cost" : "Tokens",
        ),
      ),
    );
    this.chart = el("div", { id: "usage-chart", class: "usg-chart" }, loading());
    this.table = el("div", { class: "adm-card-body", id: "usage-breakdown" }, loading());
    this.chartTitle = el("h3", {}, "Cost per day");

    this.root.append(
      pageHeader({
        title: "Usage",
        description: ctx.isSuperadmin
          ? "Requests, tokens and cost on this server, per day (UTC). Pick a tenant to see one organisation."
          : "Requests, tokens and cost of your organisation, per day (UTC), from the chat and the API.",
        actions: [this.csv],
      }),
      el(
        "section",
        { class: "adm-card usg-filters", "aria-label": "Filters" },
        el(
          "div",
          { class: "adm-toolbar usg-toolbar" },
          labelled("Range", this.rangeSelect),
          this.custom,
          this.tenantSelect ? labelled("Tenant", this.tenantSelect) : null,
        ),
      ),
      this.summary,
      card(
        el("div", { class: "adm-card-head" }, el("div", {}, this.chartTitle, el("p", {}, "Each bar is one day (UTC).")), this.metricButtons),
        el("div", { class: "adm-card-pad usg-chart-pad" }, this.chart),
      ),
      card(
        el(
          "div",
          { class: "adm-card-head" },
          el("div", {}, el("h3", {}, "Totals"), el("p", {}, "The whole range, largest cost first.")),
          labelled("By", this.breakdownSelect),
        ),
        this.table,
      ),
    );

    this.resize = new ResizeObserver(() => this.drawChart());
    this.resize.observe(this.chart);
    if (this.tenantSelect) this.loadTenants();
    this.load();
  }

  params(extra = {}) {
    return { from: this.range.from, to: this.range.to, tenant_id: this.tenantId || undefined, ...extra };
  }

  async loadTenants() {
    try {
      const tenants = await adminApi.tenants();
      for (const tenant of tenants) this.tenantSelect.append(el("option", { value: tenant.id }, `${tenant.name} (${tenant.slug})`));
    } catch (error) {
      toastError(error);
    }
  }

  async load() {
    const seq = ++this.seq;
    this.csv.href = usageApi.csvUrl(this.params());
    try {
      const daily = await usageApi.report(this.params({ group_by: "day" }));
      if (seq !== this.seq) return;
      this.daily = daily;
      this.summary.replaceChildren(tiles(daily.totals));
      this.drawChart();
    } catch (error) {
      if (seq !== this.seq) return;
      toastError(error);
      this.summary.replaceChildren();
      this.chart.replaceChildren(emptyState("alert", "Could not load the usage", error?.userMessage));
    }
    this.loadBreakdown();
  }

  async loadBreakdown() {
    const seq = this.seq;
    const group = this.breakdown;
    this.table.replaceChildren(loading());
    try {
      const report = await usageApi.report(this.params({ group_by: group }));
      if (seq !== this.seq || group !== this.breakdown) return;
      this.table.replaceChildren(
        report.rows.length === 0
          ? emptyState("chart", "No usage in this range", "Chat turns and API calls show up here within seconds.")
          : breakdownTable(report, group),
      );
    } catch (error) {
      if (seq !== this.seq) return;
      toastError(error);
      this.table.replaceChildren(emptyState("alert", "Could not load the totals", error?.userMessage));
    }
  }

  setMetric(metric) {
    this.metric = metric;
    for (const button of this.metricButtons.children) {
      button.setAttribute("aria-pressed", String(button.dataset.metric === metric));
    }
    this.chartTitle.textContent = metric === "cost" ? "Cost per day" : "Tokens per day";
    this.drawChart();
  }

  drawChart() {
    if (!this.daily || !this.chart.isConnected) return;
    const byDay = new Map(this.daily.rows.map((row) => [row.day, row]));
    const cost = this.metric === "cost";
    const series = daysBetween(this.daily.from, this.daily.to).map((day) => {
      const row = byDay.get(day);
      return { day, value: !row ? 0 : cost ? row.cost_usd : row.prompt_tokens + row.completion_tokens };
    });
    const width = Math.floor(this.chart.clientWidth) || 600;
    const height = width < 500 ? 180 : 240;
    const format = cost
      ? (value, axis) => (axis ? usdAxis(value) : usd(value))
      : (value, axis) => (axis ? compact(value) : `${count(value)} tokens`);
    this.chart.replaceChildren(
      barChart(series, { width, height, format, label: cost ? "Cost per day" : "Tokens per day" }),
    );
  }
}

function usdAxis(value) {
  if (value === 0) return "$0";
  if (value < 0.01) return `$${Number(value.toPrecision(2))}`;
  return `$${compact(value)}`;
}

function select(id, labelText, options, value) {
  const node = el(
    "select",
    { id, class: "adm-inline-select", "aria-label": labelText },
    options.map(([optionValue, optionLabel]) => el("option", { value: optionValue }, optionLabel)),
  );
  node.value = value;
  return node;
}

function labelled(text, control) {
  return el("label", { class: "usg-labelled" }, el("span", {}, text), control);
}

const GROUP_LABELS = { model: "Model", user: "User", key: "API key", tenant: "Tenant", source: "Source" };

function groupCell(row, group) {
  if (group === "model") return mono(row.model);
  if (group === "user") return row.user_email ? el("span", { class: "adm-identity-main" }, row.user_email) : muted(row.user_id ? "Deleted user" : "No user");
  if (group === "key") {
    if (!row.api_key_id) return muted("Web app (no key)");
    return el("span", { class: "adm-key-name" }, el("span", { class: "adm-identity-main" }, row.key_name || "Deleted key"), mono(`${row.api_key_id.slice(0, 8)}…`, { title: row.api_key_id }));
  }
  if (group === "tenant") return el("span", { class: "adm-identity-main" }, row.tenant_slug || row.tenant_id);
  return el("span", {}, SOURCE_NAMES[row.source] || row.source);
}

function breakdownTable(report, group) {
  const total = report.totals.cost_usd || 0;
  return dataTable({
    label: `Usage by ${GROUP_LABELS[group].toLowerCase()}`,
    rowClass: "usage-row",
    columns: [
      { label: GROUP_LABELS[group], class: "col-main" },
      { label: "Requests", class: "col-num" },
      { label: "Prompt tokens", class: "col-num" },
      { label: "Completion tokens", class: "col-num" },
      { label: "Cost", class: "col-num" },
      { label: "Share", class: "col-share" },
    ],
    rows: report.rows.map((row) => {
      const share = total > 0 ? row.cost_usd / total : 0;
      return {
        dataset: { group: row[groupKey(group)] ?? "" },
        cells: [
          groupCell(row, group),
          count(row.requests),
          count(row.prompt_tokens),
          count(row.completion_tokens),
          el("span", { class: "usg-cost" }, usd(row.cost_usd)),
          shareBar(share),
        ],
      };
    }),
  });
}

function groupKey(group) {
  return { model: "model", user: "user_id", key: "api_key_id", tenant: "tenant_id", source: "source" }[group];
}

/** The cost share as a small SVG meter (no inline style needed for its width). */
function shareBar(share) {
  const percent = Math.round(share * 100);
  return el(
    "span",
    { class: "usg-share" },
    svg(
      "svg",
      { class: "usg-share-svg", viewBox: "0 0 100 6", preserveAspectRatio: "none", "aria-hidden": "true" },
      svg("rect", { class: "usg-share-track", x: 0, y: 0, width: 100, height: 6, rx: 3 }),
      svg("rect", { class: "usg-share-fill", x: 0, y: 0, width: Math.max(share > 0 ? 2 : 0, share * 100).toFixed(1), height: 6, rx: 3 }),
    ),
    el("span", { class: "usg-share-text" }, `${percent}%`),
  );
}

// ---------------------------------------------------------------- My usage (account page)

/** A card with the caller's totals this month (UTC), for "My account". */
export function myUsageCard() {
  const body = el("div", { class: "adm-card-pad", id: "my-usage" }, loading());
  const today = todayUtc();
  const from = monthStart(today);
  const load = async () => {
    try {
      const report = await usageApi.own({ from, to: today, group_by: "model" });
      body.replaceChildren(
        tiles(report.totals, { idPrefix: "my-usage" }),
        report.rows.length
          ? el(
              "ul",
              { class: "usg-models", "aria-label": "By model" },
              report.rows.map((row) =>
                el("li", {}, mono(row.model), el("span", { class: "adm-muted" }, plural(row.requests, "request")), el("span", { class: "usg-cost" }, usd(row.cost_usd))),
              ),
            )
          : el("p", { class: "adm-muted usg-none" }, "No chat turns or API calls yet this month."),
      );
    } catch (error) {
      toastError(error);
      body.replaceChildren(emptyState("alert", "Could not load your usage", error?.userMessage));
    }
  };
  load();
  return card(cardHead("My usage", `This month so far: ${dayLabel(from, { long: true })} to today (UTC).`), body);
}
