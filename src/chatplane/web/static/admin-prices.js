// Prices (superadmins): what every model costs per million tokens, where that price comes
// from, and the operator's own price that wins over the others (edit, revert).

import { request } from "./api.js";
import {
  aicon,
  badge,
  button,
  card,
  dataTable,
  emptyState,
  formDialog,
  formValue,
  loading,
  mono,
  muted,
  pageHeader,
  textField,
  when,
} from "./admin-ui.js";
import { confirmDialog, el, toast, toastError } from "./ui.js";

const enc = encodeURIComponent;

export const pricesApi = {
  list: () => request("GET", "/api/admin/prices"),
  set: (model, fields) => request("PUT", `/api/admin/prices/${enc(model)}`, { body: fields }),
  remove: (model) => request("DELETE", `/api/admin/prices/${enc(model)}`),
};

const SOURCES = {
  admin: ["Set here", "accent"],
  settings: ["Settings", "info"],
  config: ["Config file", "neutral"],
  endpoint: ["Model settings", "neutral"],
  default: ["Unpriced", "warn"],
};

const SOURCE_HELP = {
  settings: "CHATPLANE_MODEL_PRICES",
  config: "the TOML config file",
  endpoint: "the model's own price (Models page)",
  default: "no price: it costs nothing",
};

function perMtok(value) {
  return `$${Number(value || 0).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 6 })}`;
}

export const pricesPage = {
  title: "Prices",
  access: "superadmin",
  render(root) {
    const state = { prices: [], filter: "" };
    const body = el("div", { class: "adm-card-body" }, loading());
    const search = el("input", {
      id: "price-search",
      class: "adm-search-input",
      type: "search",
      placeholder: "Filter models",
      "aria-label": "Filter models by name",
      autocomplete: "off",
      spellcheck: "false",
    });
    const note = el("p", { class: "adm-toolbar-note", id: "price-count" });

    const show = () => {
      const needle = state.filter.toLowerCase();
      const shown = state.prices.filter((p) => p.model.toLowerCase().includes(needle));
      const priced = state.prices.filter((p) => p.source === "admin").length;
      note.textContent = `${state.prices.length} models · ${priced} priced here`;
      body.replaceChildren(
        shown.length === 0
          ? emptyState("tag", state.prices.length ? "No model matches" : "No models", "")
          : priceTable(shown, load),
      );
    };
    const load = async () => {
      try {
        state.prices = await pricesApi.list();
        show();
      } catch (error) {
        toastError(error);
        body.replaceChildren(emptyState("alert", "Could not load the prices", error?.userMessage));
      }
    };
    search.addEventListener("input", () => {
      state.filter = search.value.trim();
      show();
    });

    root.append(
      pageHeader({
        title: "Prices",
        description:
          "USD per million tokens, for every model. A price set here wins over the settings, the config file and the model's own, at once on every server; usage recorded from then on costs the new price.",
      }),
      card(el("div", { class: "adm-toolbar" }, el("label", { class: "adm-search" }, aicon("search"), search), note), body),
    );
    load();
  },
};

function priceTable(prices, reload) {
  return dataTable({
    label: "Model prices",
    rowClass: "price-row",
    columns: [
      { label: "Model", class: "col-main" },
      { label: "Input / 1M", class: "col-num" },
      { label: "Output / 1M", class: "col-num" },
      { label: "Source" },
      { label: "Actions", class: "col-actions" },
    ],
    rows: prices.map((price) => {
      const [sourceName, tone] = SOURCES[price.source] || [price.source, "neutral"];
      const overridden = price.source === "admin";
      return {
        dataset: { model: price.model, source: price.source },
        cells: [
          el("div", { class: "adm-key-name" }, el("span", { class: "adm-identity-main" }, price.model), mono(price.provider)),
          el("span", { class: "usg-cost price-input" }, perMtok(price.input_usd_per_mtok)),
          el("span", { class: "usg-cost price-output" }, perMtok(price.output_usd_per_mtok)),
          el(
            "div",
            { class: "adm-status" },
            badge(sourceName, tone),
            overridden
              ? el("small", { class: "adm-muted" }, "was ", `${perMtok(price.underlying.input_usd_per_mtok)} / ${perMtok(price.underlying.output_usd_per_mtok)}`, price.updated_at ? [" · ", when(price.updated_at)] : null)
              : el("small", { class: "adm-muted" }, SOURCE_HELP[price.source] || ""),
          ),
          el(
            "div",
            { class: "adm-row-actions" },
            button("Edit", { className: "edit-price", onclick: () => editPrice(price, reload) }),
            overridden
              ? button("Revert", { kind: "danger-soft", className: "revert-price", onclick: () => revertPrice(price, reload) })
              : null,
          ),
        ],
      };
    }),
  });
}

const PRICE_ATTRS = { type: "number", min: "0", max: "100000", step: "any", inputmode: "decimal", required: true, autocomplete: "off" };

async function editPrice(price, reload) {
  const saved = await formDialog({
    title: `Price of ${price.model}`,
    description: "USD per million tokens. It applies to usage recorded from now on; past usage keeps its cost.",
    submitLabel: "Save price",
    body: [
      textField({ label: "Input (prompt) tokens", name: "input_usd_per_mtok", value: String(price.input_usd_per_mtok), ...PRICE_ATTRS }),
      textField({ label: "Output (completion) tokens", name: "output_usd_per_mtok", value: String(price.output_usd_per_mtok), ...PRICE_ATTRS }),
      muted(price.source === "admin" ? "" : `Now: ${SOURCES[price.source]?.[0] || price.source}. Revert any time to go back to it.`),
    ],
    onSubmit: (form) =>
      pricesApi.set(price.model, {
        input_usd_per_mtok: Number(formValue(form, "input_usd_per_mtok")),
        output_usd_per_mtok: Number(formValue(form, "output_usd_per_mtok")),
      }),
  });
  if (!saved) return;
  toast(`${price.model} now costs ${perMtok(saved.input_usd_per_mtok)} in / ${perMtok(saved.output_usd_per_mtok)} out per 1M tokens.`, { kind: "info" });
  reload();
}

async function revertPrice(price, reload) {
  const [sourceName] = SOURCES[price.underlying.source] || [price.underlying.source];
  const ok = await confirmDialog({
    title: `Revert the price of ${price.model}?`,
    text: `It goes back to ${perMtok(price.underlying.input_usd_per_mtok)} in / ${perMtok(price.underlying.output_usd_per_mtok)} out (${sourceName.toLowerCase()}).`,
    confirmLabel: "Revert",
  });
  if (!ok) return;
  try {
    await pricesApi.remove(price.model);
    toast(`${price.model} is back to its ${sourceName.toLowerCase()} price.`, { kind: "info" });
  } catch (error) {
    toastError(error);
  }
  reload();
}
