// The audit log: the organisation's security events, newest first, "Load more" for older ones.

import { adminApi, userEmails } from "./admin-api.js";
import { badge, button, card, emptyState, loading, muted, pageHeader, when } from "./admin-ui.js";
import { el, toastError } from "./ui.js";

const PAGE_SIZE = 50;
const LONG_ID = /^[0-9a-f]{16,}$/i;

export const auditPage = {
  title: "Audit log",
  access: "admin",
  render(root) {
    const state = { events: [], next: null, emails: new Map() };
    const body = el("div", { class: "adm-card-body" }, loading());
    const more = button("Load more", { className: "audit-more", hidden: true });
    const foot = el("div", { class: "adm-card-foot" }, more);

    const show = () => {
      body.replaceChildren(
        state.events.length === 0
          ? emptyState("log", "No events yet", "Sign-ins, role changes and key changes show up here.")
          : el("ol", { class: "adm-audit", "aria-label": "Audit events" }, state.events.map((e) => eventItem(e, state.emails))),
      );
      more.hidden = !state.next;
    };
    const load = async (before) => {
      more.disabled = true;
      try {
        const page = await adminApi.audit({ limit: PAGE_SIZE, before });
        state.events = before ? [...state.events, ...page.items] : page.items;
        state.next = page.next_before;
        show();
      } catch (error) {
        toastError(error);
        if (!before) body.replaceChildren(emptyState("log", "Could not load the audit log", error?.userMessage));
      } finally {
        more.disabled = false;
      }
    };
    more.addEventListener("click", () => load(state.next));

    root.append(
      pageHeader({
        title: "Audit log",
        description: "Security events in your organisation, newest first: sign-ins, users, invitations and keys.",
      }),
      card(body, foot),
    );
    userEmails().then((emails) => {
      state.emails = emails;
      if (state.events.length) show();
    });
    load(null);
  },
};

function tone(action) {
  if (/failed|reused|denied/.test(action)) return "danger";
  if (/revoked|disabled|deleted|everywhere/.test(action)) return "warn";
  if (/created|succeeded|accepted|enabled|sso/.test(action)) return "success";
  return "neutral";
}

/** A user id as its email where known; other ids shortened (the whole one on hover). */
function person(id, emails) {
  if (!id) return null;
  const email = emails.get(id);
  if (email) return el("span", { class: "adm-audit-person" }, email);
  return LONG_ID.test(id) ? el("span", { class: "adm-mono-soft", title: id }, `${id.slice(0, 8)}…`) : id;
}

function eventItem(event, emails) {
  return el(
    "li",
    { class: "audit-row adm-audit-item", dataset: { id: event.id, action: event.action } },
    el("div", { class: "adm-audit-time" }, when(event.created_at)),
    el(
      "div",
      { class: "adm-audit-main" },
      el("div", { class: "adm-audit-line" }, badge(event.action, tone(event.action)), person(event.subject, emails)),
      details(event.detail),
    ),
    el(
      "div",
      { class: "adm-audit-who" },
      event.actor_id ? el("span", {}, el("span", { class: "adm-muted" }, "by "), person(event.actor_id, emails)) : muted("by the system"),
      event.ip ? el("span", { class: "adm-muted" }, event.ip) : null,
    ),
  );
}

function details(detail) {
  const entries = Object.entries(detail || {});
  if (entries.length === 0) return null;
  return el(
    "dl",
    { class: "adm-details" },
    entries.map(([key, value]) => {
      const text = typeof value === "string" ? value : JSON.stringify(value);
      const long = LONG_ID.test(text);
      return el(
        "div",
        {},
        el("dt", {}, key.replaceAll("_", " ")),
        el("dd", { title: long ? text : null }, long ? `${text.slice(0, 8)}…` : text),
      );
    }),
  );
}
