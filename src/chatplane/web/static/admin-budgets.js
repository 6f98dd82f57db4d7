// Budgets on the limits page: the most a member, a key or the organisation may spend per UTC
// day, per UTC month or ever, with what was spent and is reserved in the current period.

import { request } from "./api.js";
import { adminApi } from "./admin-api.js";
import {
  badge,
  button,
  card,
  cardHead,
  dataTable,
  emptyState,
  formDialog,
  formValue,
  isPast,
  loading,
  muted,
  primaryButton,
  selectField,
  textField,
} from "./admin-ui.js";
import { usd } from "./admin-usage.js";
import { confirmDialog, el, toast, toastError } from "./ui.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const enc = encodeURIComponent;

/** `?tenant_id=…` for an operator acting on another tenant, else nothing. */
export function tenantQuery(tenantId) {
  return tenantId ? `?tenant_id=${enc(tenantId)}` : "";
}

export const budgetsApi = {
  list: (tenantId) => request("GET", `/api/admin/budgets${tenantQuery(tenantId)}`),
  create: (fields, tenantId) =>
    request("POST", `/api/admin/budgets${tenantQuery(tenantId)}`, { body: fields }),
  update: (id, limitUsd, tenantId) =>
    request("PATCH", `/api/admin/budgets/${enc(id)}${tenantQuery(tenantId)}`, {
      body: { limit_usd: limitUsd },
    }),
  remove: (id, tenantId) =>
    request("DELETE", `/api/admin/budgets/${enc(id)}${tenantQuery(tenantId)}`),
};

const PERIODS = [
  ["day", "Per day"],
  ["month", "Per month"],
  ["lifetime", "Lifetime"],
];
const PERIOD_NAMES = Object.fromEntries(PERIODS);
const BUDGET_SCOPES = { tenant: ["Organisation", "accent"], user: ["Member", "info"], key: ["API key", "neutral"] };
const USD_ATTRS = { type: "number", min: "0", max: "10000000", step: "0.01", inputmode: "decimal", autocomplete: "off" };

export function isLive(key) {
  return !key.revoked_at && !isPast(key.expires_at);
}

/**
 * The budgets card. `tenant()` answers the tenant the page shows: `{ param }` (the
 * `tenant_id` to send, none for one's own) and `{ isOwn }`.
 */
export class BudgetsCard {
  constructor(ctx, tenant) {
    this.ctx = ctx;
    this.tenant = tenant;
    this.seq = 0;
    this.body = el("div", { class: "adm-card-body", id: "budgets" }, loading());
    this.element = card(
      cardHead(
        "Budgets",
        "The most a member, a key or the whole organisation may spend per UTC day, per UTC month or ever. A request that could go over is refused.",
        primaryButton("New budget", () => this.create(), { id: "create-budget" }),
      ),
      this.body,
    );
    this.element.id = "budgets-card";
  }

  get tenantParam() {
    return this.tenant().param;
  }

  get isOwnTenant() {
    return this.tenant().isOwn;
  }

  async load() {
    const seq = ++this.seq;
    this.body.replaceChildren(loading());
    try {
      const budgets = await budgetsApi.list(this.tenantParam);
      if (seq !== this.seq) return;
      this.body.replaceChildren(
        budgets.length === 0
          ? emptyState("wallet", "No budgets", "Without a budget, spending is limited only by the rate limits.")
          : budgetTable(budgets, {
              mayEdit: (budget) => budget.scope !== "tenant" || this.ctx.isSuperadmin,
              onEdit: (budget) => this.edit(budget),
              onDelete: (budget) => this.remove(budget),
            }),
      );
    } catch (error) {
      if (seq !== this.seq) return;
      toastError(error);
      this.body.replaceChildren(emptyState("alert", "Could not load the budgets", error?.userMessage));
    }
  }

  async create() {
    const operator = this.ctx.isSuperadmin;
    // Members and keys can be listed for one's own organisation only.
    const scopes = [
      ...(this.isOwnTenant
        ? [
            ["user", "A member"],
            ["key", "An API key"],
          ]
        : []),
      ...(operator ? [["tenant", "The whole organisation"]] : []),
    ];
    const subjectSelect = el("select", { id: "budget-subject", name: "subject_id", required: true }, el("option", { value: "" }, "Loading…"));
    const subjectField = el("label", { class: "field adm-field" }, el("span", { id: "budget-subject-label" }, "Member"), subjectSelect);
    const scopeField = selectField({ label: "For", name: "scope", options: scopes, value: scopes[0][0] });
    const scopeSelect = scopeField.querySelector("select");

    const subjects = { user: null, key: null };
    const fillSubjects = async () => {
      const scope = scopeSelect.value;
      subjectField.hidden = scope === "tenant";
      subjectSelect.required = scope !== "tenant";
      if (scope === "tenant") return;
      subjectField.querySelector("span").textContent = scope === "user" ? "Member" : "API key";
      subjectSelect.replaceChildren(el("option", { value: "" }, "Loading…"));
      try {
        subjects[scope] ??= scope === "user" ? await memberOptions() : await keyOptions();
      } catch (error) {
        subjectSelect.replaceChildren(el("option", { value: "" }, error?.userMessage || "Could not load the list"));
        return;
      }
      if (scopeSelect.value !== scope) return;
      subjectSelect.replaceChildren(
        el("option", { value: "" }, scope === "user" ? "Choose a member" : "Choose a key"),
        ...subjects[scope].map(([value, label]) => el("option", { value }, label)),
      );
    };
    scopeSelect.addEventListener("change", fillSubjects);
    fillSubjects();

    const created = await formDialog({
      title: "New budget",
      description: "Requests that could take the spend of the period over the limit are refused. Costs come from the model prices.",
      submitLabel: "Create budget",
      body: [
        el("div", { class: "adm-field-row" }, scopeField, selectField({ label: "Period", name: "period", options: PERIODS, value: "month", hint: "Days and months are UTC." })),
        subjectField,
        textField({ label: "Limit in USD", name: "limit_usd", required: true, ...USD_ATTRS }),
      ],
      onSubmit: (form) => {
        const scope = formValue(form, "scope");
        return budgetsApi.create(
          {
            scope,
            subject_id: scope === "tenant" ? null : formValue(form, "subject_id"),
            period: formValue(form, "period"),
            limit_usd: Number(formValue(form, "limit_usd")),
          },
          this.tenantParam,
        );
      },
    });
    if (!created) return;
    toast(`${created.subject_label} may now spend ${usd(created.limit_usd)} ${periodPhrase(created.period)}.`, { kind: "info" });
    this.load();
  }

  async edit(budget) {
    const saved = await formDialog({
      title: `Budget of ${budget.subject_label}`,
      description: `${PERIOD_NAMES[budget.period] || budget.period}. Spent ${usd(budget.spent_usd)} ${budget.period === "lifetime" ? "so far" : "this period"}.`,
      submitLabel: "Save budget",
      body: textField({ label: "Limit in USD", name: "limit_usd", value: String(budget.limit_usd), required: true, ...USD_ATTRS }),
      onSubmit: (form) => budgetsApi.update(budget.id, Number(formValue(form, "limit_usd")), this.tenantParam),
    });
    if (!saved) return;
    toast(`${saved.subject_label} may now spend ${usd(saved.limit_usd)} ${periodPhrase(saved.period)}.`, { kind: "info" });
    this.load();
  }

  async remove(budget) {
    const ok = await confirmDialog({
      title: `Delete the budget of ${budget.subject_label}?`,
      text: `Its spending ${periodPhrase(budget.period)} is no longer capped by this budget. The usage records stay.`,
      confirmLabel: "Delete budget",
    });
    if (!ok) return;
    try {
      await budgetsApi.remove(budget.id, this.tenantParam);
      toast(`The budget of ${budget.subject_label} is deleted.`, { kind: "info" });
    } catch (error) {
      toastError(error);
    }
    this.load();
  }
}

/** "since Nov 1 (UTC)": budget periods start at midnight UTC, whatever the browser's zone. */
function periodStart(iso) {
  const date = new Date(iso);
  const day = date.toLocaleDateString([], { month: "short", day: "numeric", timeZone: "UTC" });
  return el("time", { datetime: iso, title: date.toLocaleString() }, `since ${day} (UTC)`);
}

function periodPhrase(period) {
  return { day: "per day", month: "per month", lifetime: "in total" }[period] || period;
}

async function memberOptions() {
  const page = await adminApi.users({ limit: 200 });
  return page.items.filter((user) => !user.disabled).map((user) => [user.id, user.email]);
}

async function keyOptions() {
  const keys = await adminApi.tenantKeys();
  return keys.filter(isLive).map((key) => [key.id, `${key.name} (${key.prefix}…) · ${key.user_email}`]);
}

function budgetTable(budgets, { mayEdit, onEdit, onDelete }) {
  return dataTable({
    label: "Budgets",
    rowClass: "budget-row",
    columns: [
      { label: "For", class: "col-main" },
      { label: "Period" },
      { label: "Spent of limit", class: "col-spent" },
      { label: "Reserved", class: "col-num" },
      { label: "Actions", class: "col-actions" },
    ],
    rows: budgets.map((budget) => {
      const [scopeName, tone] = BUDGET_SCOPES[budget.scope] || [budget.scope, "neutral"];
      return {
        dataset: { id: budget.id, scope: budget.scope, subject: budget.subject_id, period: budget.period },
        cells: [
          el("div", { class: "adm-key-name" }, el("span", { class: "adm-identity-main budget-subject" }, budget.subject_label), badge(scopeName, tone)),
          el(
            "div",
            { class: "adm-status" },
            el("span", {}, PERIOD_NAMES[budget.period] || budget.period),
            budget.period_start ? el("small", { class: "adm-muted" }, periodStart(budget.period_start)) : null,
          ),
          el(
            "div",
            { class: "lim-budget" },
            el(
              "span",
              { class: "lim-budget-amounts" },
              el("span", { class: "usg-cost budget-spent" }, usd(budget.spent_usd)),
              muted(" of "),
              el("span", { class: "budget-limit" }, usd(budget.limit_usd)),
            ),
            budgetMeter(budget),
          ),
          el("span", { class: "budget-reserved", title: "Held by requests running now" }, usd(budget.reserved_usd)),
          el(
            "div",
            { class: "adm-row-actions" },
            mayEdit(budget)
              ? [
                  button("Edit", { className: "edit-budget", onclick: () => onEdit(budget) }),
                  button("Delete", { kind: "danger-soft", className: "delete-budget", onclick: () => onDelete(budget) }),
                ]
              : muted("Set by the operator"),
          ),
        ],
      };
    }),
  });
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  node.append(...children);
  return node;
}

/**
 * Spent (solid) and reserved (light) against the limit, as an SVG (widths are attributes, so
 * no inline style is needed): warning colour above 80 % spent, red at 100 %.
 */
function budgetMeter(budget) {
  const limit = Number(budget.limit_usd);
  const spent = Number(budget.spent_usd);
  const reserved = Number(budget.reserved_usd);
  const share = limit > 0 ? spent / limit : 1; // a $0 budget allows nothing
  const held = limit > 0 ? Math.min(Math.max(0, 1 - share), reserved / limit) : 0;
  const level = share >= 1 ? "full" : share > 0.8 ? "warn" : "ok";
  const spentWidth = Math.min(1, share) * 100;
  const text = limit > 0 ? `${Math.round(share * 100)}%` : "Blocks all";
  return el(
    "span",
    { class: `lim-meter lim-meter-${level}`, dataset: { level } },
    svg(
      "svg",
      { class: "lim-meter-svg", viewBox: "0 0 100 8", preserveAspectRatio: "none", role: "img", "aria-label": `${text} of the budget spent` },
      svg("rect", { class: "lim-meter-track", x: 0, y: 0, width: 100, height: 8, rx: 4 }),
      svg("rect", { class: "lim-meter-held", x: spentWidth.toFixed(1), y: 0, width: (held * 100).toFixed(1), height: 8 }),
      svg("rect", { class: "lim-meter-fill", x: 0, y: 0, width: Math.max(spent > 0 ? 2 : 0, spentWidth).toFixed(1), height: 8, rx: 4 }),
    ),
    el("span", { class: "lim-meter-text" }, text),
  );
}
