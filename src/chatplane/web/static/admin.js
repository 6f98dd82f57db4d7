// chatplane admin pages: the shell (who is signed in, navigation by hash) around the pages.

import { ApiError, api, mayHaveSession, onUnauthorized } from "./api.js";
import { adminApi } from "./admin-api.js";
import { accountPage } from "./admin-account.js";
import { auditPage } from "./admin-audit.js";
import { invitationsPage } from "./admin-invitations.js";
import { keysPage } from "./admin-keys.js";
import { limitsPage } from "./admin-limits.js";
import { opsPage } from "./admin-ops.js";
import { modelsPage, tenantsPage } from "./admin-platform.js";
import { pricesPage } from "./admin-prices.js";
import { aicon } from "./admin-ui.js";
import { usagePage } from "./admin-usage.js";
import { usersPage } from "./admin-users.js";
import { $, el, toastError } from "./ui.js";

/** Every page: `access` is who may open it ("any", "admin" or "superadmin"). */
const PAGES = {
  users: usersPage,
  invitations: invitationsPage,
  keys: keysPage,
  audit: auditPage,
  usage: usagePage,
  limits: limitsPage,
  tenants: tenantsPage,
  models: modelsPage,
  prices: pricesPage,
  ops: opsPage,
  account: accountPage,
};

const ROLE_NAMES = { owner: "Owner", admin: "Admin", member: "Member" };

const ctx = {
  me: null,
  isAdmin: false,
  isSuperadmin: false,
};

// ---------------------------------------------------------------- who is signed in

function toLogin() {
  location.replace("/");
}

/** Whether the signed-in admin is a platform operator. `/api/auth/me` does not say, so the
 * admin's own row of the user list does (a probe of an operator-only route would log a 403
 * in the browser console of every ordinary admin). */
async function findSuperadmin(me) {
  if (typeof me.is_superadmin === "boolean") return me.is_superadmin;
  try {
    const page = await adminApi.users({ email: me.email, limit: 20 });
    return Boolean(page.items?.find((user) => user.id === me.id)?.is_superadmin);
  } catch (error) {
    toastError(error);
    return false;
  }
}

// ---------------------------------------------------------------- navigation

function defaultPage() {
  return ctx.isAdmin ? "users" : "restricted";
}

function pageFromLocation() {
  const match = location.hash.match(/^#\/([a-z-]+)/);
  return match ? match[1] : defaultPage();
}

function mayOpen(page) {
  if (page.access === "superadmin") return ctx.isSuperadmin;
  if (page.access === "admin") return ctx.isAdmin;
  return true;
}

function render() {
  const name = pageFromLocation();
  const page = PAGES[name];
  const root = el("div", { class: "adm-page-inner" });
  $("page").replaceChildren(root);
  $("page-scroll").scrollTop = 0;
  closeDrawer();

  let title = page?.title || "Admin";
  if (!page || !mayOpen(page)) {
    if (page?.access === "superadmin" && ctx.isAdmin) {
      location.replace(`#/${defaultPage()}`); // not an operator: nothing to show here
      return;
    }
    if (!page && name !== "restricted") {
      location.replace(`#/${defaultPage()}`);
      return;
    }
    title = "Admins only";
    root.append(restricted());
  } else {
    page.render(root, ctx);
  }
  document.title = `${title} · chatplane admin`;
  for (const link of document.querySelectorAll(".adm-nav-link")) {
    const active = link.dataset.page === name;
    link.classList.toggle("active", active);
    link.toggleAttribute("aria-current", active);
  }
}

function restricted() {
  return el(
    "div",
    { id: "admins-only", class: "adm-restricted" },
    el("span", { class: "adm-restricted-icon" }, aicon("shield")),
    el("h1", { id: "page-title" }, "Admins only"),
    el(
      "p",
      {},
      "These pages are for the owners and admins of your organisation. ",
      "If you need access, ask one of them to change your role.",
    ),
    el(
      "div",
      { class: "adm-restricted-actions" },
      el("a", { class: "btn btn-primary", href: "/" }, aicon("chat"), "Back to chat"),
      el("a", { class: "btn btn-outline", href: "#/account" }, aicon("user"), "My account"),
    ),
  );
}

// ---------------------------------------------------------------- shell

function showShell() {
  const { me } = ctx;
  $("user-email").textContent = me.email;
  $("user-avatar").textContent = (me.email || "?").slice(0, 1).toUpperCase();
  $("user-role").textContent = ctx.isSuperadmin ? "Superadmin" : ROLE_NAMES[me.role] || me.role;
  for (const tag of document.querySelectorAll(".adm-area-name")) {
    tag.textContent = ctx.isAdmin ? "Admin" : "Account";
  }
  $("nav-org").hidden = !ctx.isAdmin;
  $("nav-platform").hidden = !ctx.isSuperadmin;
  document.body.dataset.role = ctx.isSuperadmin ? "superadmin" : me.role;
  $("boot").hidden = true;
  $("admin-view").hidden = false;
}

function openDrawer() {
  document.body.classList.add("drawer-open");
  $("scrim").hidden = false;
}

function closeDrawer() {
  document.body.classList.remove("drawer-open");
  $("scrim").hidden = true;
}

async function logout() {
  try {
    await api.logout();
  } catch (error) {
    if (error?.status !== 401) {
      toastError(error);
      return;
    }
  }
  location.assign("/");
}

function wire() {
  $("logout").addEventListener("click", logout);
  $("sidebar-open").addEventListener("click", openDrawer);
  $("sidebar-close").addEventListener("click", closeDrawer);
  $("scrim").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && document.body.classList.contains("drawer-open")) closeDrawer();
  });
  window.addEventListener("hashchange", render);
  onUnauthorized(toLogin);
}

async function boot() {
  wire();
  if (!mayHaveSession()) {
    toLogin();
    return;
  }
  let me;
  try {
    me = await api.me();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      toLogin();
      return;
    }
    $("boot").replaceChildren(
      el("p", { class: "adm-fatal" }, error?.userMessage || "Could not load the admin pages."),
    );
    return;
  }
  ctx.me = me;
  ctx.isAdmin = me.role === "owner" || me.role === "admin" || me.is_superadmin === true;
  ctx.isSuperadmin = ctx.isAdmin ? await findSuperadmin(me) : false;
  showShell();
  render();
}

boot();
