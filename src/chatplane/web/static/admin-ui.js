// Building blocks of the admin pages: page headers, tables, badges, dates, form dialogs.

import { copyText, el, icon } from "./ui.js";

const SVG_NS = "http://www.w3.org/2000/svg";

/** An icon from the admin sprite (/static/admin-icons.svg). */
export function aicon(name) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(SVG_NS, "use");
  use.setAttribute("href", `/static/admin-icons.svg#${name}`);
  svg.append(use);
  return svg;
}

// ---------------------------------------------------------------- page parts

export function pageHeader({ title, description, actions = [] }) {
  return el(
    "header",
    { class: "adm-head" },
    el("div", { class: "adm-head-text" }, el("h1", { id: "page-title" }, title), description && el("p", {}, description)),
    actions.length ? el("div", { class: "adm-head-actions" }, actions) : null,
  );
}

export function card(...children) {
  return el("section", { class: "adm-card" }, children);
}

export function cardHead(title, description, ...actions) {
  return el(
    "div",
    { class: "adm-card-head" },
    el("div", {}, el("h3", {}, title), description && el("p", {}, description)),
    actions.length ? el("div", { class: "adm-card-actions" }, actions) : null,
  );
}

/** A button: kind outline|primary|ghost|danger|danger-soft, size sm|md, `className` added. */
export function button(label, { kind = "outline", size = "sm", iconName, className = "", onclick, ...attrs } = {}) {
  const classes = ["btn", `btn-${kind}`, size === "sm" ? "btn-sm" : "", className].filter(Boolean);
  return el(
    "button",
    { class: classes.join(" "), type: "button", onclick, ...attrs },
    iconName ? aicon(iconName) : null,
    label,
  );
}

/** The primary action of a page ("Create user"), with a plus icon. */
export function primaryButton(label, onclick, attrs = {}) {
  return el("button", { class: "btn btn-primary", type: "button", onclick, ...attrs }, icon("plus"), label);
}

export function badge(text, tone = "neutral") {
  return el("span", { class: `adm-badge adm-badge-${tone}` }, text);
}

export function loading(label = "Loading…") {
  return el("div", { class: "adm-loading", role: "status" }, el("div", { class: "spinner" }), label);
}

export function emptyState(iconName, title, text) {
  return el(
    "div",
    { class: "adm-empty" },
    el("span", { class: "adm-empty-icon" }, aicon(iconName)),
    el("p", { class: "adm-empty-title" }, title),
    text && el("p", { class: "adm-empty-text" }, text),
  );
}

/**
 * A table that becomes a list of cards on phones.
 * columns: [{label, class?}]; rows: [{cells: [node|string], class?, dataset?}].
 */
export function dataTable({ columns, rows, label, rowClass = "" }) {
  const head = el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.class }, c.label))));
  const body = el(
    "tbody",
    {},
    rows.map((row) =>
      el(
        "tr",
        { class: [rowClass, row.class].filter(Boolean).join(" ") || null, dataset: row.dataset },
        row.cells.map((cell, i) =>
          el("td", { class: columns[i].class, dataset: { label: columns[i].label } }, cell),
        ),
      ),
    ),
  );
  return el("div", { class: "adm-table-wrap" }, el("table", { class: "adm-table", "aria-label": label }, head, body));
}

/** The email of a user with an initial, as the first cell of a row. */
export function identity(email, ...extras) {
  return el(
    "div",
    { class: "adm-identity" },
    el("span", { class: "avatar adm-avatar", "aria-hidden": "true" }, (email || "?").slice(0, 1).toUpperCase()),
    el("div", { class: "adm-identity-text" }, el("span", { class: "adm-identity-main" }, email), extras),
  );
}

export function mono(text, attrs = {}) {
  return el("code", { class: "adm-mono", ...attrs }, text);
}

export function muted(text) {
  return el("span", { class: "adm-muted" }, text);
}

// ---------------------------------------------------------------- dates and devices

const TIME = { hour: "numeric", minute: "2-digit" };

/** "Today, 2:05 PM", "Yesterday, 9:12 AM", "Mar 3, 2:05 PM", "Mar 3, 2024" (locale's clock). */
export function formatDate(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const now = new Date();
  const days = Math.round((dayStart(now) - dayStart(date)) / 86_400_000);
  const time = date.toLocaleTimeString([], TIME);
  if (days === 0) return `Today, ${time}`;
  if (days === 1) return `Yesterday, ${time}`;
  if (days === -1) return `Tomorrow, ${time}`;
  if (date.getFullYear() === now.getFullYear()) {
    return `${date.toLocaleDateString([], { month: "short", day: "numeric" })}, ${time}`;
  }
  return date.toLocaleDateString([], { dateStyle: "medium" });
}

function dayStart(date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();
}

/** A <time> with the short date, the full one on hover; `empty` when there is no date. */
export function when(iso, empty = "Never") {
  if (!iso) return muted(empty);
  const date = new Date(iso);
  return el("time", { datetime: iso, title: date.toLocaleString() }, formatDate(iso));
}

export function isPast(iso) {
  return Boolean(iso) && new Date(iso).getTime() <= Date.now();
}

/** "Chrome on macOS" from a user agent; good enough to tell one's devices apart. */
export function deviceName(userAgent) {
  const ua = userAgent || "";
  if (!ua) return "Unknown device";
  const browser =
    (/Edg\//.test(ua) && "Edge") ||
    (/OPR\//.test(ua) && "Opera") ||
    (/Firefox\//.test(ua) && "Firefox") ||
    (/Chrom(e|ium)\//.test(ua) && "Chrome") ||
    (/Safari\//.test(ua) && "Safari") ||
    (/^curl\//.test(ua) && "curl") ||
    (/python|httpx|aiohttp|requests/i.test(ua) && "Script") ||
    null;
  const system =
    (/Android/.test(ua) && "Android") ||
    (/iPhone|iPad|iPod/.test(ua) && "iOS") ||
    (/Windows/.test(ua) && "Windows") ||
    (/Mac OS X|Macintosh/.test(ua) && "macOS") ||
    (/CrOS/.test(ua) && "ChromeOS") ||
    (/Linux/.test(ua) && "Linux") ||
    null;
  if (browser && system) return `${browser} on ${system}`;
  return browser || system || ua.slice(0, 40);
}

export const SESSION_METHODS = { password: "Password", sso: "Single sign-on", invitation: "Invitation" };

/** One web session, with an End button (shared with the account page). */
export function sessionItem(session, onEnd, { endLabel = "End" } = {}) {
  return el(
    "li",
    { class: "adm-session", dataset: { id: session.id } },
    el("span", { class: "adm-session-icon" }, aicon("monitor")),
    el(
      "div",
      { class: "adm-session-text" },
      el(
        "p",
        { class: "adm-session-device" },
        deviceName(session.user_agent),
        session.current ? badge("This device", "success") : null,
      ),
      el(
        "p",
        { class: "adm-session-meta" },
        [
          SESSION_METHODS[session.method] || session.method,
          session.ip || "unknown address",
        ].join(" · "),
        " · active ",
        when(session.last_used_at || session.created_at),
      ),
    ),
    onEnd
      ? button(endLabel, { kind: "danger-soft", className: "end-session", onclick: onEnd })
      : muted(""),
  );
}

export function capitalize(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : "";
}

// ---------------------------------------------------------------- form fields

let fieldSeq = 0;

function fieldId(name) {
  fieldSeq += 1;
  return `f-${name}-${fieldSeq}`;
}

function fieldWrap(label, control, hint) {
  return el(
    "label",
    { class: "field adm-field" },
    el("span", {}, label),
    control,
    hint ? el("small", { class: "adm-hint" }, hint) : null,
  );
}

export function textField({ label, name, type = "text", value, hint, ...attrs }) {
  const input = el("input", { id: fieldId(name), name, type, ...attrs });
  if (value !== undefined && value !== null) input.value = value;
  return fieldWrap(label, input, hint);
}

export function selectField({ label, name, options, value, hint, ...attrs }) {
  const select = el(
    "select",
    { id: fieldId(name), name, ...attrs },
    options.map(([optionValue, optionLabel]) => el("option", { value: optionValue }, optionLabel)),
  );
  if (value !== undefined) select.value = value;
  return fieldWrap(label, select, hint);
}

export function checkField({ label, name, checked = false, hint, ...attrs }) {
  return el(
    "label",
    { class: "adm-check" },
    el("input", { type: "checkbox", name, checked, ...attrs }),
    el("span", {}, el("span", { class: "adm-check-label" }, label), hint ? el("small", { class: "adm-hint" }, hint) : null),
  );
}

export const ROLE_OPTIONS = [
  ["member", "Member"],
  ["admin", "Admin"],
  ["owner", "Owner"],
];

export const ROLE_TONES = { owner: "accent", admin: "info", member: "neutral" };

// ---------------------------------------------------------------- secrets shown once

/** A read-only field with the value and a Copy button. */
export function secretBox(value, { label = "Copy" } = {}) {
  const input = el("input", { class: "adm-secret-value", type: "text", readonly: true, "aria-label": label, spellcheck: "false" });
  input.value = value;
  input.addEventListener("focus", () => input.select());
  const copy = el("button", { class: "btn btn-primary btn-sm adm-copy", type: "button" }, icon("copy"), "Copy");
  copy.addEventListener("click", async () => {
    const ok = await copyText(value);
    copy.replaceChildren(icon(ok ? "check" : "alert"), ok ? "Copied" : "Copy failed");
    copy.classList.toggle("copied", ok);
    setTimeout(() => {
      copy.replaceChildren(icon("copy"), "Copy");
      copy.classList.remove("copied");
    }, 2000);
  });
  return el("div", { class: "adm-secret" }, input, copy);
}

/** What a dialog shows after creating something with a one-time secret. */
export function secretResult({ title, text, value, copyLabel }) {
  return el(
    "div",
    { class: "adm-result" },
    el("div", { class: "adm-result-head" }, el("span", { class: "adm-result-icon" }, icon("check")), el("h3", {}, title)),
    el("p", { class: "adm-dialog-desc" }, text),
    secretBox(value, { label: copyLabel }),
    el("p", { class: "adm-warning" }, aicon("lock"), "This is shown only once. Copy it now."),
  );
}

// ---------------------------------------------------------------- form dialogs

/**
 * A modal form. `onSubmit(form)` does the work: it may return a node to show in place of the
 * form (a secret shown once), else the dialog closes. An error stays in the dialog, so the
 * user can correct the form (toasts would sit behind the modal's backdrop).
 * Resolves with the value onSubmit returned, or null when cancelled.
 */
export function formDialog({ title, description, body, submitLabel, danger = false, wide = false, onSubmit }) {
  const titleId = fieldId("dialog-title");
  const dialog = el("dialog", {
    class: `dialog adm-dialog${wide ? " adm-dialog-wide" : ""}`,
    "aria-labelledby": titleId,
  });
  const error = el("p", { class: "form-error", role: "alert", hidden: true });
  const submit = el("button", { class: `btn ${danger ? "btn-danger" : "btn-primary"}`, type: "submit" }, submitLabel);
  const cancel = el("button", { class: "btn btn-ghost", type: "button", onclick: () => dialog.close() }, "Cancel");
  const form = el(
    "form",
    { class: "dialog-body adm-form" },
    el("h3", { id: titleId }, title),
    description ? el("p", { class: "adm-dialog-desc" }, description) : null,
    el("div", { class: "adm-form-fields" }, body),
    error,
    el("div", { class: "dialog-actions" }, cancel, submit),
  );
  dialog.append(form);

  let outcome = null;
  let busy = false;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    busy = true;
    submit.disabled = true;
    error.hidden = true;
    try {
      const result = await onSubmit(form);
      outcome = result ?? true;
      if (result instanceof Node) {
        const done = el("button", { class: "btn btn-primary", type: "button", onclick: () => dialog.close() }, "Done");
        form.replaceChildren(result, el("div", { class: "dialog-actions" }, done));
        done.focus();
      } else {
        dialog.close();
      }
    } catch (err) {
      if (err?.name === "AbortError") return;
      console.warn(err);
      error.textContent = err?.userMessage || err?.message || "Something went wrong.";
      error.hidden = false;
    } finally {
      busy = false;
      submit.disabled = false;
    }
  });

  document.body.append(dialog);
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(outcome);
    });
  });
}

/** The trimmed value of a named control of a form. */
export function formValue(form, name) {
  const control = form.elements.namedItem(name);
  if (!control) return "";
  return typeof control.value === "string" ? control.value.trim() : "";
}
