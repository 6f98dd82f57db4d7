// Operator pages (superadmins): tenants and the models added at run time.

import { adminApi } from "./admin-api.js";
import {
  badge,
  button,
  card,
  checkField,
  dataTable,
  emptyState,
  formDialog,
  formValue,
  loading,
  mono,
  muted,
  pageHeader,
  primaryButton,
  selectField,
  textField,
  when,
} from "./admin-ui.js";
import { confirmDialog, el, toast, toastError } from "./ui.js";

/** A page body that loads a list and shows it as a table (or an empty state). */
function listPage(root, { header, empty, fetch, table }) {
  const body = el("div", { class: "adm-card-body" }, loading());
  const load = async () => {
    try {
      const items = await fetch();
      body.replaceChildren(items.length === 0 ? empty() : table(items, load));
    } catch (error) {
      toastError(error);
      body.replaceChildren(emptyState("alert", "Could not load this list", error?.userMessage));
    }
  };
  root.append(header(load), card(body));
  load();
}

// ---------------------------------------------------------------- tenants

const SLUG_PATTERN = "[a-z0-9][a-z0-9\\-]{0,62}";

function slugify(name) {
  return name
    .toLowerCase()
    .normalize("NFKD")
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 63);
}

function domainList(text) {
  return text
    .split(/[\s,;]+/)
    .map((d) => d.trim())
    .filter(Boolean);
}

const DOMAINS_HINT = "Comma separated. People with these email domains who sign in with single sign-on join this tenant.";

export const tenantsPage = {
  title: "Tenants",
  access: "superadmin",
  render(root) {
    listPage(root, {
      header: (reload) =>
        pageHeader({
          title: "Tenants",
          description: "The organisations on this server. Each has its own users, keys, conversations and audit log.",
          actions: [primaryButton("Add tenant", () => addTenant(reload), { id: "create-tenant" })],
        }),
      fetch: () => adminApi.tenants(),
      empty: () => emptyState("building", "No tenants", "Add the first organisation."),
      table: tenantTable,
    });
  },
};

function tenantTable(tenants, reload) {
  return dataTable({
    label: "Tenants",
    rowClass: "tenant-row",
    columns: [
      { label: "Tenant", class: "col-main" },
      { label: "SSO domains" },
      { label: "Status" },
      { label: "Created" },
      { label: "Actions", class: "col-actions" },
    ],
    rows: tenants.map((tenant) => ({
      dataset: { id: tenant.id, slug: tenant.slug },
      class: tenant.disabled ? "is-disabled" : "",
      cells: [
        el("div", { class: "adm-key-name" }, el("span", { class: "adm-identity-main" }, tenant.name), mono(tenant.slug)),
        tenant.sso_domains.length
          ? el("span", { class: "adm-badges" }, tenant.sso_domains.map((d) => badge(d, "neutral")))
          : muted("None"),
        tenant.disabled ? badge("Disabled", "danger") : badge("Active", "success"),
        when(tenant.created_at),
        el(
          "div",
          { class: "adm-row-actions" },
          button("Edit", { className: "edit-tenant", onclick: () => editTenant(tenant, reload) }),
          tenant.disabled
            ? button("Enable", { className: "enable-tenant", onclick: () => setTenantDisabled(tenant, false, reload) })
            : button("Disable", {
                kind: "danger-soft",
                className: "disable-tenant",
                onclick: () => setTenantDisabled(tenant, true, reload),
              }),
        ),
      ],
    })),
  });
}

async function addTenant(reload) {
  const name = textField({ label: "Name", name: "name", required: true, maxlength: 200, autocomplete: "off" });
  const slug = textField({
    label: "Slug",
    name: "slug",
    required: true,
    maxlength: 63,
    pattern: SLUG_PATTERN,
    autocomplete: "off",
    spellcheck: "false",
    hint: "Lowercase letters, digits and dashes; used by the CLI (--tenant). It cannot change later.",
  });
  const nameInput = name.querySelector("input");
  const slugInput = slug.querySelector("input");
  let slugEdited = false;
  slugInput.addEventListener("input", () => {
    slugEdited = true;
  });
  nameInput.addEventListener("input", () => {
    if (!slugEdited) slugInput.value = slugify(nameInput.value);
  });
  const created = await formDialog({
    title: "Add a tenant",
    description: "A new, empty organisation. Invite its first owner afterwards, or let SSO users of its domains in.",
    submitLabel: "Add tenant",
    body: [
      name,
      slug,
      textField({ label: "SSO domains", name: "sso_domains", placeholder: "example.com, example.org", autocomplete: "off", hint: DOMAINS_HINT }),
    ],
    onSubmit: (form) =>
      adminApi.createTenant({
        name: formValue(form, "name"),
        slug: formValue(form, "slug"),
        sso_domains: domainList(formValue(form, "sso_domains")),
      }),
  });
  if (!created) return;
  toast(`The tenant ${created.name} was added.`, { kind: "info" });
  reload();
}

async function editTenant(tenant, reload) {
  const updated = await formDialog({
    title: `Edit ${tenant.name}`,
    description: `Tenant “${tenant.slug}”.`,
    submitLabel: "Save",
    body: [
      textField({ label: "Name", name: "name", required: true, maxlength: 200, value: tenant.name }),
      textField({ label: "SSO domains", name: "sso_domains", value: tenant.sso_domains.join(", "), hint: DOMAINS_HINT }),
    ],
    onSubmit: (form) =>
      adminApi.updateTenant(tenant.id, {
        name: formValue(form, "name"),
        sso_domains: domainList(formValue(form, "sso_domains")),
      }),
  });
  if (!updated) return;
  toast(`${updated.name} was saved.`, { kind: "info" });
  reload();
}

async function setTenantDisabled(tenant, disabled, reload) {
  if (disabled) {
    const ok = await confirmDialog({
      title: `Disable ${tenant.name}?`,
      text: "Its users can no longer sign in, and nobody joins it through invitations or single sign-on, until you enable it again.",
      confirmLabel: "Disable",
    });
    if (!ok) return;
  }
  try {
    await adminApi.updateTenant(tenant.id, { disabled });
    toast(`${tenant.name} ${disabled ? "is disabled" : "is enabled again"}.`, { kind: "info" });
  } catch (error) {
    toastError(error);
  }
  reload();
}

// ---------------------------------------------------------------- models

const PROVIDERS = [
  ["openai", "OpenAI-compatible"],
  ["anthropic", "Anthropic"],
];
const BASE_URL_HINT = "Empty: the provider's public API. Any OpenAI-compatible server works (vLLM, Ollama, LM Studio).";

export const modelsPage = {
  title: "Models",
  access: "superadmin",
  render(root) {
    listPage(root, {
      header: (reload) =>
        pageHeader({
          title: "Models",
          description: "Upstream models added at run time, next to those from the config file. API keys are stored encrypted and never shown again.",
          actions: [primaryButton("Add model", () => editModel(null, reload), { id: "create-model" })],
        }),
      fetch: () => adminApi.models(),
      empty: () => emptyState("cpu", "No models added here", "Models from the config file and the built-in mock models are not listed."),
      table: modelTable,
    });
  },
};

function price(value) {
  return `$${Number(value || 0).toLocaleString(undefined, { maximumFractionDigits: 4 })}`;
}

function modelTable(models, reload) {
  return dataTable({
    label: "Models",
    rowClass: "model-row",
    columns: [
      { label: "Model", class: "col-main" },
      { label: "Upstream" },
      { label: "API key" },
      { label: "Price per 1M tokens" },
      { label: "Updated" },
      { label: "Actions", class: "col-actions" },
    ],
    rows: models.map((model) => ({
      dataset: { id: model.id, name: model.name },
      cells: [
        el(
          "div",
          { class: "adm-key-name" },
          el("span", { class: "adm-identity-main" }, model.name),
          el("span", {}, badge(model.provider === "anthropic" ? "Anthropic" : "OpenAI-compatible", "neutral")),
        ),
        el("div", { class: "adm-key-name" }, mono(model.upstream_model), el("span", { class: "adm-url" }, model.base_url)),
        model.api_key_hint ? el("span", { class: "key-hint" }, mono(model.api_key_hint)) : muted("None"),
        el("span", { class: "adm-price" }, `${price(model.input_usd_per_mtok)} in · ${price(model.output_usd_per_mtok)} out`),
        when(model.updated_at),
        el(
          "div",
          { class: "adm-row-actions" },
          button("Edit", { className: "edit-model", onclick: () => editModel(model, reload) }),
          button("Delete", { kind: "danger-soft", className: "delete-model", onclick: () => deleteModel(model, reload) }),
        ),
      ],
    })),
  });
}

async function editModel(model, reload) {
  const adding = model === null;
  const body = [
    adding
      ? textField({
          label: "Name",
          name: "name",
          required: true,
          maxlength: 200,
          pattern: "[A-Za-z0-9._:\\/\\-]+",
          autocomplete: "off",
          spellcheck: "false",
          placeholder: "gpt-4o-mini",
          hint: "What users pick in the chat and send as `model`. Letters, digits and . _ : / -",
        })
      : null,
    el(
      "div",
      { class: "adm-field-row" },
      selectField({ label: "Provider", name: "provider", options: PROVIDERS, value: model?.provider || "openai" }),
      textField({
        label: "Upstream model",
        name: "upstream_model",
        maxlength: 200,
        value: model?.upstream_model,
        autocomplete: "off",
        spellcheck: "false",
        placeholder: adding ? "Same as the name" : "",
      }),
    ),
    textField({
      label: "Base URL",
      name: "base_url",
      type: "url",
      maxlength: 500,
      value: model?.base_url,
      placeholder: "https://api.openai.com/v1",
      hint: BASE_URL_HINT,
    }),
    textField({
      label: "API key",
      name: "api_key",
      type: "password",
      autocomplete: "new-password",
      maxlength: 1000,
      placeholder: adding ? "" : model.api_key_hint ? `Stored key ${model.api_key_hint} — leave empty to keep it` : "No key stored",
      hint: "Write-only: it is stored encrypted and never shown again.",
    }),
    !adding && model.api_key_hint ? checkField({ label: "Remove the stored key", name: "remove_key" }) : null,
    el(
      "div",
      { class: "adm-field-row" },
      textField({ label: "Input, USD per 1M tokens", name: "input_usd_per_mtok", type: "number", min: 0, step: "any", value: model?.input_usd_per_mtok ?? 0 }),
      textField({ label: "Output, USD per 1M tokens", name: "output_usd_per_mtok", type: "number", min: 0, step: "any", value: model?.output_usd_per_mtok ?? 0 }),
    ),
  ].filter(Boolean);

  const saved = await formDialog({
    title: adding ? "Add a model" : `Edit ${model.name}`,
    description: adding ? "Users see it in the model picker at once." : "Changes apply to new answers at once.",
    submitLabel: adding ? "Add model" : "Save",
    wide: true,
    body,
    onSubmit: (form) => {
      const fields = {
        provider: formValue(form, "provider"),
        input_usd_per_mtok: Number(formValue(form, "input_usd_per_mtok") || 0),
        output_usd_per_mtok: Number(formValue(form, "output_usd_per_mtok") || 0),
      };
      for (const name of ["upstream_model", "base_url"]) {
        const value = formValue(form, name);
        if (value) fields[name] = value;
      }
      const key = form.elements.namedItem("api_key").value;
      if (key) fields.api_key = key;
      else if (form.elements.namedItem("remove_key")?.checked) fields.api_key = "";
      if (adding) return adminApi.createModel({ name: formValue(form, "name"), ...fields });
      return adminApi.updateModel(model.id, fields);
    },
  });
  if (!saved) return;
  toast(adding ? `The model ${saved.name} was added.` : `${saved.name} was saved.`, { kind: "info" });
  reload();
}

async function deleteModel(model, reload) {
  const ok = await confirmDialog({
    title: `Delete ${model.name}?`,
    text: "Users can no longer pick it; conversations that used it keep their messages. The stored key is deleted.",
    confirmLabel: "Delete model",
  });
  if (!ok) return;
  try {
    await adminApi.deleteModel(model.id);
    toast(`The model ${model.name} was deleted.`, { kind: "info" });
  } catch (error) {
    toastError(error);
  }
  reload();
}
