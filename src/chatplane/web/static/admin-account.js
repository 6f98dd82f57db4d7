// My account (any signed-in user): password, own API keys, own sessions, log out everywhere.

import { accountApi } from "./admin-api.js";
import { keyTable, revokeKey } from "./admin-keys.js";
import { myUsageCard } from "./admin-usage.js";
import {
  ROLE_TONES,
  badge,
  button,
  capitalize,
  card,
  cardHead,
  checkField,
  emptyState,
  formDialog,
  formValue,
  identity,
  loading,
  pageHeader,
  secretResult,
  selectField,
  sessionItem,
  textField,
} from "./admin-ui.js";
import { confirmDialog, el, toast, toastError } from "./ui.js";

const KEY_EXPIRY = [
  ["", "Never"],
  ["30", "30 days"],
  ["90", "90 days"],
  ["365", "1 year"],
];

export const accountPage = {
  title: "My account",
  access: "any",
  render(root, ctx) {
    const keys = el("div", { class: "adm-card-body" }, loading());
    const sessions = el("div", { class: "adm-card-body adm-card-pad" }, loading());

    const loadKeys = async () => {
      try {
        const mine = await accountApi.keys();
        keys.replaceChildren(
          mine.length === 0
            ? emptyState("key", "No API keys", "A key lets scripts and tools like the OpenAI SDK use chatplane as you.")
            : keyTable(mine, {
                onRevoke: (key) =>
                  revokeKey(key, () => accountApi.revokeKey(key.id), loadKeys, {
                    text: "Anything that uses this key stops working at once. This cannot be undone.",
                  }),
              }),
        );
      } catch (error) {
        toastError(error);
        keys.replaceChildren(emptyState("key", "Could not load your keys", error?.userMessage));
      }
    };
    const loadSessions = async () => {
      try {
        const mine = await accountApi.sessions();
        sessions.replaceChildren(
          mine.length === 0
            ? emptyState("monitor", "No web sessions", "")
            : el(
                "ul",
                { class: "adm-session-list" },
                mine.map((s) => sessionItem(s, s.current ? null : () => endSession(s, loadSessions), { endLabel: "Sign out" })),
              ),
        );
      } catch (error) {
        toastError(error);
      }
    };

    root.append(
      pageHeader({ title: "My account", description: "Your password, your API keys and where you are signed in." }),
      el(
        "div",
        { class: "adm-account-grid" },
        card(
          cardHead("Profile"),
          el(
            "div",
            { class: "adm-card-pad adm-profile" },
            identity(ctx.me.email, el("span", { class: "adm-badges" }, badge(capitalize(ctx.me.role), ROLE_TONES[ctx.me.role]), ctx.isSuperadmin ? badge("Superadmin", "warn") : null)),
          ),
          passwordForm(loadSessions),
        ),
        card(
          cardHead("Sessions", "The browsers where you are signed in to the web app.",
            button("Log out everywhere", { kind: "danger-soft", iconName: "power", id: "logout-everywhere", onclick: logoutEverywhere }),
          ),
          sessions,
        ),
      ),
      card(
        cardHead(
          "API keys",
          "For the chat API and the OpenAI-compatible gateway (/v1). A key acts as you.",
          button("New key", { kind: "primary", id: "create-key", onclick: () => createKey(ctx, loadKeys) }),
        ),
        keys,
      ),
      myUsageCard(),
    );
    loadKeys();
    loadSessions();
  },
};

function passwordForm(onChanged) {
  const error = el("p", { class: "form-error", role: "alert", hidden: true });
  const submit = el("button", { class: "btn btn-primary", type: "submit", id: "change-password" }, "Change password");
  const form = el(
    "form",
    { class: "adm-card-pad adm-password", id: "password-form" },
    el("h4", {}, "Change password"),
    textField({ label: "Current password", name: "current_password", type: "password", autocomplete: "current-password", required: true }),
    textField({ label: "New password", name: "new_password", type: "password", autocomplete: "new-password", required: true, minlength: 8, hint: "At least 8 characters." }),
    textField({ label: "Repeat the new password", name: "repeat_password", type: "password", autocomplete: "new-password", required: true, minlength: 8 }),
    error,
    el("div", { class: "adm-form-actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const current = form.elements.namedItem("current_password").value;
    const next = form.elements.namedItem("new_password").value;
    const repeat = form.elements.namedItem("repeat_password").value;
    error.hidden = true;
    if (next !== repeat) {
      error.textContent = "The new passwords do not match.";
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      await accountApi.changePassword(current, next);
      form.reset();
      toast("Password changed. Your other sessions were signed out.", { kind: "info" });
      onChanged();
    } catch (err) {
      toastError(err);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

async function createKey(ctx, reload) {
  const created = await formDialog({
    title: "New API key",
    description: "Use it as a bearer token: Authorization: Bearer <key>.",
    submitLabel: "Create key",
    body: [
      textField({ label: "Name", name: "name", required: true, maxlength: 100, autocomplete: "off", placeholder: "e.g. laptop scripts" }),
      el(
        "fieldset",
        { class: "adm-fieldset" },
        el("legend", {}, "Scopes"),
        checkField({ label: "Chat", name: "scope_chat", checked: true, hint: "Conversations and the /v1 gateway." }),
        ctx.isAdmin ? checkField({ label: "Admin", name: "scope_admin", hint: "The admin API of your organisation." }) : null,
      ),
      selectField({ label: "Expires", name: "expires_in_days", options: KEY_EXPIRY, value: "" }),
    ],
    onSubmit: async (form) => {
      const scopes = ["chat", "admin"].filter((scope) => form.elements.namedItem(`scope_${scope}`)?.checked);
      if (scopes.length === 0) throw new Error("Choose at least one scope.");
      const days = formValue(form, "expires_in_days");
      const key = await accountApi.createKey({
        name: formValue(form, "name"),
        scopes,
        ...(days ? { expires_in_days: Number(days) } : {}),
      });
      reload();
      return secretResult({
        title: "Key created",
        text: `Your new key “${key.name}”. Store it somewhere safe, like a password manager.`,
        value: key.key,
        copyLabel: "API key",
      });
    },
  });
  return created;
}

async function endSession(session, reload) {
  try {
    await accountApi.endSession(session.id);
    toast("That session is signed out.", { kind: "info" });
  } catch (error) {
    toastError(error);
  }
  reload();
}

async function logoutEverywhere() {
  const ok = await confirmDialog({
    title: "Log out everywhere?",
    text: "Every browser where you are signed in is signed out, this one included. API keys keep working.",
    confirmLabel: "Log out everywhere",
  });
  if (!ok) return;
  try {
    await accountApi.logoutEverywhere();
  } catch (error) {
    if (error?.status !== 401) {
      toastError(error);
      return;
    }
  }
  location.assign("/");
}
