// API keys of the organisation: list and revoke. The key table is shared with "My account".

import { adminApi } from "./admin-api.js";
import { badge, button, card, dataTable, emptyState, isPast, loading, mono, pageHeader, when } from "./admin-ui.js";
import { confirmDialog, el, toast, toastError } from "./ui.js";

export const keysPage = {
  title: "API keys",
  access: "admin",
  render(root) {
    const body = el("div", { class: "adm-card-body" }, loading());
    const load = async () => {
      try {
        const keys = await adminApi.tenantKeys();
        body.replaceChildren(
          keys.length === 0
            ? emptyState("key", "No API keys yet", "Users create their own keys under My account.")
            : keyTable(keys, {
                withOwner: true,
                onRevoke: (key) =>
                  revokeKey(key, () => adminApi.revokeTenantKey(key.id), load, {
                    text: `“${key.name}” of ${key.user_email} stops working at once. This cannot be undone.`,
                  }),
              }),
        );
      } catch (error) {
        toastError(error);
        body.replaceChildren(emptyState("key", "Could not load the keys", error?.userMessage));
      }
    };
    root.append(
      pageHeader({
        title: "API keys",
        description: "Every API key in your organisation, for the chat API and the OpenAI-compatible gateway. Revoking a key stops it at once.",
      }),
      card(body),
    );
    load();
  },
};

/** Active, Revoked or Expired; an active key that expires says until when. */
export function keyStatus(key) {
  if (key.revoked_at) return badge("Revoked", "danger");
  if (isPast(key.expires_at)) return badge("Expired", "neutral");
  if (!key.expires_at) return badge("Active", "success");
  return el("span", { class: "adm-status" }, badge("Active", "success"), el("small", {}, "until ", when(key.expires_at)));
}

function isLive(key) {
  return !key.revoked_at && !isPast(key.expires_at);
}

/** A table of keys; `withOwner` adds the owner column (the organisation's list). */
export function keyTable(keys, { withOwner = false, onRevoke }) {
  const columns = [
    { label: "Key", class: "col-main" },
    withOwner ? { label: "Owner" } : null,
    { label: "Scopes" },
    { label: "Created" },
    { label: "Last used" },
    { label: "Status" },
    { label: "Actions", class: "col-actions" },
  ].filter(Boolean);
  return dataTable({
    label: "API keys",
    rowClass: "key-row",
    columns,
    rows: keys.map((key) => ({
      dataset: { id: key.id, name: key.name },
      class: isLive(key) ? "" : "is-disabled",
      cells: [
        el("div", { class: "adm-key-name" }, el("span", { class: "adm-identity-main" }, key.name), mono(`${key.prefix}…`)),
        withOwner ? el("span", { class: "adm-owner" }, key.user_email) : null,
        el("span", { class: "adm-badges" }, key.scopes.map((scope) => badge(scope, scope === "admin" ? "warn" : "neutral"))),
        when(key.created_at),
        when(key.last_used_at),
        keyStatus(key),
        el(
          "div",
          { class: "adm-row-actions" },
          key.revoked_at
            ? null
            : button("Revoke", { kind: "danger-soft", className: "revoke-key", onclick: () => onRevoke(key) }),
        ),
      ].filter((cell) => cell !== null),
    })),
  });
}

export async function revokeKey(key, revoke, reload, { text }) {
  const ok = await confirmDialog({ title: `Revoke “${key.name}”?`, text, confirmLabel: "Revoke key" });
  if (!ok) return;
  try {
    await revoke();
    toast(`The key “${key.name}” is revoked.`, { kind: "info" });
  } catch (error) {
    toastError(error);
  }
  reload();
}
