// Users: search, pages, create, change role, disable/enable, sessions.

import { adminApi } from "./admin-api.js";
import {
  ROLE_OPTIONS,
  aicon,
  badge,
  button,
  card,
  dataTable,
  emptyState,
  formDialog,
  formValue,
  identity,
  loading,
  pageHeader,
  primaryButton,
  selectField,
  sessionItem,
  textField,
  when,
} from "./admin-ui.js";
import { confirmDialog, el, toast, toastError } from "./ui.js";

const PAGE_SIZE = 25;
const SEARCH_DELAY_MS = 250;

export const usersPage = {
  title: "Users",
  access: "admin",
  render(root, ctx) {
    new UsersView(root, ctx).start();
  },
};

class UsersView {
  constructor(root, ctx) {
    this.root = root;
    this.ctx = ctx;
    this.query = "";
    this.offset = 0;
    this.page = null;
    this.seq = 0;
    this.searchTimer = 0;
  }

  start() {
    this.search = el("input", {
      id: "user-search",
      class: "adm-search-input",
      type: "search",
      placeholder: "Search by email",
      "aria-label": "Search users by email",
      autocomplete: "off",
      spellcheck: "false",
    });
    this.search.addEventListener("input", () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => {
        this.query = this.search.value.trim();
        this.offset = 0;
        this.load();
      }, SEARCH_DELAY_MS);
    });
    this.summary = el("p", { id: "user-count", class: "adm-toolbar-note" });
    this.body = el("div", { class: "adm-card-body" }, loading());
    this.pager = el("div", { class: "adm-pager" });
    this.root.append(
      pageHeader({
        title: "Users",
        description: "The people in your organisation: their roles, access and sign-in sessions.",
        actions: [primaryButton("Create user", () => this.create(), { id: "create-user" })],
      }),
      card(
        el(
          "div",
          { class: "adm-toolbar" },
          el("label", { class: "adm-search" }, aicon("search"), this.search),
          this.summary,
        ),
        this.body,
        this.pager,
      ),
    );
    this.load();
  }

  async load() {
    const seq = ++this.seq;
    try {
      const page = await adminApi.users({ email: this.query, limit: PAGE_SIZE, offset: this.offset });
      if (seq !== this.seq) return;
      if (page.items.length === 0 && this.offset > 0) {
        this.offset = Math.max(0, this.offset - PAGE_SIZE); // the last page emptied meanwhile
        this.load();
        return;
      }
      this.page = page;
      this.renderPage();
    } catch (error) {
      if (seq !== this.seq) return;
      toastError(error);
      this.body.replaceChildren(emptyState("users", "Could not load the users", error?.userMessage));
    }
  }

  renderPage() {
    const { items, total } = this.page;
    const first = total === 0 ? 0 : this.offset + 1;
    const last = this.offset + items.length;
    this.summary.textContent = this.query
      ? `${total} matching “${this.query}”`
      : `${total} ${total === 1 ? "user" : "users"}`;

    if (items.length === 0) {
      this.body.replaceChildren(
        this.query
          ? emptyState("search", "No users match", `Nobody's email contains “${this.query}”.`)
          : emptyState("users", "No users yet", "Create a user or send an invitation."),
      );
    } else {
      this.body.replaceChildren(
        dataTable({
          label: "Users",
          rowClass: "user-row",
          columns: [
            { label: "User", class: "col-main" },
            { label: "Role" },
            { label: "Status" },
            { label: "Last sign-in" },
            { label: "Actions", class: "col-actions" },
          ],
          rows: items.map((user) => this.row(user)),
        }),
      );
    }

    this.pager.replaceChildren();
    if (total > PAGE_SIZE) {
      this.pager.append(
        el("span", { class: "adm-pager-note" }, `${first}–${last} of ${total}`),
        el(
          "div",
          { class: "adm-pager-buttons" },
          button("Previous", {
            className: "adm-prev",
            disabled: this.offset === 0,
            onclick: () => this.goTo(this.offset - PAGE_SIZE),
          }),
          button("Next", {
            className: "adm-next",
            disabled: this.page.next_offset === null,
            onclick: () => this.goTo(this.page.next_offset),
          }),
        ),
      );
    }
  }

  goTo(offset) {
    this.offset = Math.max(0, offset);
    this.load();
  }

  row(user) {
    const me = user.id === this.ctx.me.id;
    const protectedUser = user.is_superadmin && !this.ctx.isSuperadmin;
    const role = el(
      "select",
      {
        class: "adm-inline-select role-select",
        "aria-label": `Role of ${user.email}`,
        disabled: protectedUser,
      },
      ROLE_OPTIONS.map(([value, label]) => el("option", { value }, label)),
    );
    role.value = user.role;
    role.addEventListener("change", () => this.changeRole(user, role));

    const extras = [
      me ? badge("You", "accent") : null,
      user.is_superadmin ? badge("Superadmin", "warn") : null,
      user.has_password ? null : badge("SSO only", "neutral"),
    ].filter(Boolean);

    return {
      dataset: { id: user.id, email: user.email },
      class: user.disabled ? "is-disabled" : "",
      cells: [
        identity(user.email, extras.length ? el("span", { class: "adm-badges" }, extras) : null),
        role,
        user.disabled ? badge("Disabled", "danger") : badge("Active", "success"),
        when(user.last_login_at),
        el(
          "div",
          { class: "adm-row-actions" },
          button("Sessions", {
            iconName: "monitor",
            className: "user-sessions",
            onclick: () => showSessions(user),
          }),
          me || protectedUser
            ? null
            : user.disabled
              ? button("Enable", { className: "user-enable", onclick: () => this.setDisabled(user, false) })
              : button("Disable", {
                  kind: "danger-soft",
                  className: "user-disable",
                  onclick: () => this.setDisabled(user, true),
                }),
        ),
      ],
    };
  }

  async changeRole(user, select) {
    const role = select.value;
    if (user.id === this.ctx.me.id) {
      const ok = await confirmDialog({
        title: "Change your own role?",
        text: `You will become ${role === "member" ? "a member" : `an ${role}`}. You may lose access to these pages.`,
        confirmLabel: "Change role",
      });
      if (!ok) {
        select.value = user.role;
        return;
      }
    }
    select.disabled = true;
    try {
      const updated = await adminApi.updateUser(user.id, { role });
      Object.assign(user, updated);
      toast(`${user.email} is now ${roleName(updated.role)}.`, { kind: "info" });
    } catch (error) {
      select.value = user.role;
      toastError(error);
    } finally {
      select.disabled = false;
    }
  }

  async setDisabled(user, disabled) {
    if (disabled) {
      const ok = await confirmDialog({
        title: `Disable ${user.email}?`,
        text: "They are signed out everywhere at once, and their API keys stop working. You can enable the account again later.",
        confirmLabel: "Disable",
      });
      if (!ok) return;
    }
    try {
      await adminApi.updateUser(user.id, { disabled });
      toast(`${user.email} ${disabled ? "is disabled" : "is enabled again"}.`, { kind: "info" });
      this.load();
    } catch (error) {
      toastError(error);
    }
  }

  async create() {
    const created = await formDialog({
      title: "Create a user",
      description: "The user joins your organisation at once. To let someone choose their own password, send an invitation instead.",
      submitLabel: "Create user",
      body: [
        textField({ label: "Email", name: "email", type: "email", required: true, autocomplete: "off", maxlength: 320 }),
        selectField({ label: "Role", name: "role", options: ROLE_OPTIONS, value: "member" }),
        textField({
          label: "Password",
          name: "password",
          type: "password",
          autocomplete: "new-password",
          minlength: 8,
          hint: "At least 8 characters. Leave empty for an account that signs in with single sign-on only.",
        }),
      ],
      onSubmit: async (form) => {
        const password = form.elements.namedItem("password").value;
        const fields = { email: formValue(form, "email"), role: formValue(form, "role") };
        if (password) fields.password = password;
        return adminApi.createUser(fields);
      },
    });
    if (!created) return;
    toast(`${created.email} was created.`, { kind: "info" });
    this.load();
  }
}

function roleName(role) {
  return role === "member" ? "a member" : `an ${role}`;
}

// ---------------------------------------------------------------- sessions of a user

async function showSessions(user) {
  const list = el("div", { class: "adm-sessions" }, loading());
  const endAll = button("End all sessions", {
    kind: "danger-soft",
    size: "md",
    className: "end-all-sessions",
    iconName: "power",
  });
  const close = el("button", { class: "btn btn-ghost", type: "button" }, "Close");
  const dialog = el(
    "dialog",
    { class: "dialog adm-dialog adm-dialog-wide", "aria-label": `Sessions of ${user.email}`, id: "sessions-dialog" },
    el(
      "div",
      { class: "dialog-body" },
      el("h3", {}, "Sessions"),
      el("p", { class: "adm-dialog-desc" }, `Where ${user.email} is signed in to the web app.`),
      list,
      el("div", { class: "dialog-actions adm-split-actions" }, endAll, close),
    ),
  );
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();

  const reload = async () => {
    try {
      const sessions = await adminApi.userSessions(user.id);
      endAll.disabled = sessions.length === 0;
      list.replaceChildren(
        sessions.length === 0
          ? emptyState("monitor", "No active sessions", "This user is not signed in anywhere.")
          : el("ul", { class: "adm-session-list" }, sessions.map((s) => sessionItem(s, () => endOne(s)))),
      );
    } catch (error) {
      list.replaceChildren(el("p", { class: "form-error", role: "alert" }, error?.userMessage || "Could not load the sessions."));
    }
  };
  const endOne = async (session) => {
    try {
      await adminApi.endUserSession(user.id, session.id);
      await reload();
    } catch (error) {
      list.prepend(el("p", { class: "form-error", role: "alert" }, error?.userMessage || "Could not end the session."));
    }
  };
  endAll.addEventListener("click", async () => {
    const ok = await confirmDialog({
      title: "End all sessions?",
      text: `${user.email} is signed out of the web app on every device.`,
      confirmLabel: "End all",
    });
    if (!ok) return;
    endAll.disabled = true;
    try {
      const { sessions_ended: ended } = await adminApi.logoutUserEverywhere(user.id);
      list.prepend(el("p", { class: "adm-note-ok", role: "status" }, `${ended} ${ended === 1 ? "session" : "sessions"} ended.`));
      await reload();
    } catch (error) {
      endAll.disabled = false;
      list.prepend(el("p", { class: "form-error", role: "alert" }, error?.userMessage || "Could not end the sessions."));
    }
  });
  reload();
}
