// Limits (tenant admins and operators): what the organisation, each member and each key may
// use per minute and at once, each key's own limits, and the budgets (admin-budgets.js).
// Operators set the organisation's overrides and budgets, for any tenant they pick.

import { request } from "./api.js";
import { adminApi } from "./admin-api.js";
import { BudgetsCard, isLive, tenantQuery } from "./admin-budgets.js";
import {
  aicon,
  button,
  card,
  cardHead,
  dataTable,
  emptyState,
  formDialog,
  formValue,
  loading,
  mono,
  muted,
  pageHeader,
  textField,
} from "./admin-ui.js";
import { count } from "./admin-usage.js";
import { el, toast, toastError } from "./ui.js";

const enc = encodeURIComponent;

export const limitsApi = {
  limits: (tenantId) => request("GET", `/api/admin/limits${tenantQuery(tenantId)}`),
  setLimits: (values, tenantId) =>
    request("PUT", `/api/admin/limits${tenantQuery(tenantId)}`, { body: values }),
  setKeyLimits: (keyId, values) =>
    request("PATCH", `/api/admin/keys/${enc(keyId)}/limits`, { body: values }),
};

/** The three limits of a scope: the suffix of its field names and how they are shown. */
const KINDS = [
  { field: "rpm", label: "Requests / min", short: "Requests/min" },
  { field: "tpm", label: "Tokens / min", short: "Tokens/min" },
  { field: "max_concurrent", label: "Concurrent", short: "Concurrent" },
];

/** Who a row of the limits table is about, and the prefix of its field names. */
const SCOPES = [
  { id: "tenant", prefix: "", name: "The organisation", text: "All its members and keys together" },
  { id: "user", prefix: "user_", name: "Each member", text: "Chat and API calls of one person" },
  { id: "key", prefix: "key_", name: "Each API key", text: "Unless the key has its own limits" },
];


const LIMIT_ATTRS = { type: "number", min: "0", max: "10000000", step: "1", inputmode: "numeric", autocomplete: "off" };

/** 0 is unlimited. */
function limitText(value) {
  return Number(value) === 0 ? "Unlimited" : count(value);
}

// ---------------------------------------------------------------- the page

export const limitsPage = {
  title: "Limits",
  access: "admin",
  render(root, ctx) {
    new LimitsView(root, ctx).start();
  },
};

class LimitsView {
  constructor(root, ctx) {
    this.root = root;
    this.ctx = ctx;
    this.ownTenant = ctx.me.tenant_id;
    this.tenantId = this.ownTenant;
    this.limits = null;
    this.seq = 0;
  }

  /** The `tenant_id` to send: none for one's own tenant. */
  get tenantParam() {
    return this.tenantId === this.ownTenant ? undefined : this.tenantId;
  }

  get isOwnTenant() {
    return this.tenantId === this.ownTenant;
  }

  start() {
    const operator = this.ctx.isSuperadmin;
    this.limitsBody = el("div", { class: "adm-card-body", id: "limits-table" }, loading());
    this.limitsNote = el("div", { class: "lim-note", id: "limits-note" });
    this.keysCard = el("div");
    this.budgets = new BudgetsCard(this.ctx, () => ({ param: this.tenantParam, isOwn: this.isOwnTenant }));
    this.editLimits = operator
      ? button("Edit limits", { kind: "outline", iconName: "gauge", id: "edit-limits", onclick: () => this.editOverrides(), disabled: true })
      : null;
    const limitsCard = card(
      cardHead(
        "Rate limits",
        "Requests per minute, tokens per minute and requests running at once. A request must stay within every row that applies to it.",
        ...(this.editLimits ? [this.editLimits] : []),
      ),
      this.limitsBody,
      this.limitsNote,
      this.responseCacheRow(),
    );
    limitsCard.id = "limits-card";

    this.tenantSelect = operator
      ? el("select", { id: "limits-tenant", class: "adm-inline-select", "aria-label": "Tenant" }, el("option", { value: this.ownTenant }, "Your organisation"))
      : null;
    this.tenantSelect?.addEventListener("change", () => {
      this.tenantId = this.tenantSelect.value;
      this.load();
    });

    this.root.append(
      pageHeader({
        title: "Limits",
        description: operator
          ? "What an organisation may use. You set its limits and budgets; its admins set the limits of its keys and the budgets of its members and keys."
          : "What your organisation, its members and its API keys may use, and the budgets that cap what they spend.",
      }),
      ...(this.tenantSelect
        ? [
            el(
              "section",
              { class: "adm-card usg-filters", "aria-label": "Tenant" },
              el("div", { class: "adm-toolbar usg-toolbar" }, el("label", { class: "usg-labelled" }, el("span", {}, "Tenant"), this.tenantSelect)),
            ),
          ]
        : []),
      limitsCard,
      this.keysCard,
      this.budgets.element,
    );
    if (this.tenantSelect) this.loadTenants();
    this.load();
  }

  async loadTenants() {
    try {
      const tenants = await adminApi.tenants();
      const options = tenants.map((tenant) =>
        el("option", { value: tenant.id }, `${tenant.name} (${tenant.slug})${tenant.id === this.ownTenant ? " · yours" : ""}`),
      );
      this.tenantSelect.replaceChildren(...options);
      this.tenantSelect.value = this.tenantId;
    } catch (error) {
      toastError(error);
    }
  }

  load() {
    const seq = ++this.seq;
    this.limits = null;
    this.limitsLoaded = this.loadLimits(seq);
    this.loadKeys(seq);
    this.budgets.load();
  }

  // -------------------------------------------------------------- rate limits

  async loadLimits(seq = this.seq) {
    this.limitsBody.replaceChildren(loading());
    if (this.editLimits) this.editLimits.disabled = true;
    this.cacheToggle.disabled = true;
    try {
      const limits = await limitsApi.limits(this.tenantParam);
      if (seq !== this.seq) return null;
      this.limits = limits;
      this.limitsBody.replaceChildren(limitsTable(limits));
      this.cacheToggle.checked = Boolean(limits.response_cache);
      this.cacheToggle.disabled = false;
      if (this.editLimits) this.editLimits.disabled = false;
      this.limitsNote.replaceChildren(
        aicon(this.ctx.isSuperadmin ? "alert" : "lock"),
        el(
          "span",
          {},
          this.ctx.isSuperadmin
            ? "Empty fields use the server's default (its settings); 0 is unlimited. Changes apply within seconds on every server."
            : "The platform's operator sets these. Ask them if your organisation needs more. You can give single API keys their own limits below.",
        ),
      );
      return limits;
    } catch (error) {
      if (seq !== this.seq) return null;
      toastError(error);
      this.limitsBody.replaceChildren(emptyState("alert", "Could not load the limits", error?.userMessage));
      return null;
    }
  }

  /** The organisation's opt-in to the gateway response cache (its admins may set it). */
  responseCacheRow() {
    this.cacheToggle = el("input", { type: "checkbox", id: "response-cache-toggle", disabled: true });
    this.cacheToggle.addEventListener("change", () => this.setResponseCache(this.cacheToggle.checked));
    return el(
      "label",
      { class: "lim-note", id: "response-cache" },
      this.cacheToggle,
      el(
        "span",
        {},
        "Response cache: answer repeated gateway requests with temperature 0 from the cache, at no upstream cost (X-Chatplane-Cache: hit). A key can choose otherwise through the API.",
      ),
    );
  }

  async setResponseCache(on) {
    this.cacheToggle.disabled = true;
    try {
      const limits = await limitsApi.setLimits({ response_cache: on }, this.tenantParam);
      if (this.limits) this.limits.response_cache = limits.response_cache;
      toast(on ? "The response cache is on." : "The response cache is off.", { kind: "info" });
    } catch (error) {
      this.cacheToggle.checked = !on;
      toastError(error);
    } finally {
      this.cacheToggle.disabled = false;
    }
  }

  async editOverrides() {
    const limits = this.limits;
    if (!limits) return;
    const tenantName = this.tenantSelect?.selectedOptions[0]?.textContent || "the organisation";
    const saved = await formDialog({
      title: "Edit limits",
      description: `For ${tenantName.replace(/ · yours$/, "")}. Leave a field empty for the server's default; 0 is unlimited.`,
      submitLabel: "Save limits",
      wide: true,
      body: SCOPES.map((scope) =>
        el(
          "fieldset",
          { class: "adm-fieldset lim-fieldset", dataset: { scope: scope.id } },
          el("legend", {}, scope.name),
          el(
            "div",
            { class: "lim-field-row" },
            KINDS.map((kind) => {
              const name = `${scope.prefix}${kind.field}`;
              return textField({
                label: kind.label,
                name,
                value: limits.overrides[name] ?? "",
                placeholder: `Default: ${limitText(limits.defaults[name])}`,
                "aria-label": `${scope.name}: ${kind.label}`,
                ...LIMIT_ATTRS,
              });
            }),
          ),
        ),
      ),
      onSubmit: (form) => {
        const values = {};
        for (const scope of SCOPES) {
          for (const kind of KINDS) {
            const name = `${scope.prefix}${kind.field}`;
            values[name] = optionalInt(formValue(form, name));
          }
        }
        return limitsApi.setLimits(values, this.tenantParam);
      },
    });
    if (!saved) return;
    toast("The limits are saved.", { kind: "info" });
    this.load();
  }

  // -------------------------------------------------------------- key limits

  async loadKeys(seq = this.seq) {
    const body = el("div", { class: "adm-card-body", id: "key-limits" }, loading());
    const keysCard = card(
      cardHead("API key limits", "A key's own limits replace the organisation's limits for each API key. Empty: inherit; 0: unlimited."),
      body,
    );
    keysCard.id = "key-limits-card";
    this.keysCard.replaceWith(keysCard);
    this.keysCard = keysCard;
    if (!this.isOwnTenant) {
      // The keys API lists one's own organisation's keys only.
      body.replaceChildren(emptyState("key", "Set by the organisation's admins", "Key limits can be set here for your own organisation only."));
      return;
    }
    try {
      // The organisation's key limits are what a key without its own inherits.
      const [keys, limits] = await Promise.all([adminApi.tenantKeys(), this.limitsLoaded]);
      if (seq !== this.seq) return;
      if (!limits) {
        body.replaceChildren(emptyState("alert", "Could not load the limits"));
        return;
      }
      const live = keys.filter(isLive);
      body.replaceChildren(
        live.length === 0
          ? emptyState("key", "No active API keys", "Members create their own keys under My account.")
          : keyLimitsTable(live, limits, (key) => this.editKeyLimits(key, limits)),
      );
    } catch (error) {
      if (seq !== this.seq) return;
      toastError(error);
      body.replaceChildren(emptyState("alert", "Could not load the keys", error?.userMessage));
    }
  }

  async editKeyLimits(key, limits) {
    const saved = await formDialog({
      title: `Limits of “${key.name}”`,
      description: `The key ${key.prefix}… of ${key.user_email}. Leave a field empty for the organisation's key limit; 0 is unlimited.`,
      submitLabel: "Save limits",
      body: el(
        "div",
        { class: "lim-field-row" },
        KINDS.map((kind) =>
          textField({
            label: kind.label,
            name: kind.field,
            value: key[kind.field] ?? "",
            placeholder: `Inherit: ${limitText(limits.effective[`key_${kind.field}`])}`,
            ...LIMIT_ATTRS,
          }),
        ),
      ),
      onSubmit: (form) => {
        const values = {};
        for (const kind of KINDS) values[kind.field] = optionalInt(formValue(form, kind.field));
        return limitsApi.setKeyLimits(key.id, values);
      },
    });
    if (!saved) return;
    toast(`The limits of “${key.name}” are saved.`, { kind: "info" });
    this.loadKeys();
  }
}

/** "" -> null (inherit), else the integer typed. */
function optionalInt(text) {
  return text === "" ? null : Number(text);
}

// ---------------------------------------------------------------- tables

/** One limit: its value, and where it comes from. */
function limitCell(value, { own, inherited, ownLabel, inheritLabel }) {
  const isOwn = own !== null && own !== undefined;
  return el(
    "div",
    { class: "lim-value", dataset: { source: isOwn ? "override" : "default" } },
    el("span", { class: `lim-number${Number(value) === 0 ? " lim-unlimited" : ""}` }, limitText(value)),
    isOwn
      ? el("small", { class: "lim-source lim-source-own" }, ownLabel, inherited === undefined ? null : ` · default ${limitText(inherited)}`)
      : el("small", { class: "lim-source" }, inheritLabel),
  );
}

function limitsTable(limits) {
  return dataTable({
    label: "Rate limits",
    rowClass: "limit-row",
    columns: [{ label: "Applies to", class: "col-main" }, ...KINDS.map((kind) => ({ label: kind.label, class: "col-num" }))],
    rows: SCOPES.map((scope) => ({
      dataset: { scope: scope.id },
      cells: [
        el("div", { class: "adm-key-name" }, el("span", { class: "adm-identity-main" }, scope.name), muted(scope.text)),
        ...KINDS.map((kind) => {
          const name = `${scope.prefix}${kind.field}`;
          return limitCell(limits.effective[name], {
            own: limits.overrides[name],
            inherited: limits.defaults[name],
            ownLabel: "Override",
            inheritLabel: "Server default",
          });
        }),
      ],
    })),
  });
}

function keyLimitsTable(keys, limits, onEdit) {
  return dataTable({
    label: "API key limits",
    rowClass: "key-limit-row",
    columns: [
      { label: "Key", class: "col-main" },
      { label: "Owner" },
      ...KINDS.map((kind) => ({ label: kind.label, class: "col-num" })),
      { label: "Actions", class: "col-actions" },
    ],
    rows: keys.map((key) => ({
      dataset: { id: key.id, name: key.name },
      cells: [
        el("div", { class: "adm-key-name" }, el("span", { class: "adm-identity-main" }, key.name), mono(`${key.prefix}…`)),
        el("span", { class: "adm-owner" }, key.user_email),
        ...KINDS.map((kind) => {
          const own = key[kind.field];
          const inherited = limits.effective[`key_${kind.field}`];
          return el(
            "span",
            { class: `key-${kind.field.replace("_", "-")}` },
            limitCell(own ?? inherited, { own, ownLabel: "Own limit", inheritLabel: "Inherited" }),
          );
        }),
        el("div", { class: "adm-row-actions" }, button("Edit", { className: "edit-key-limits", onclick: () => onEdit(key) })),
      ],
    })),
  });
}

