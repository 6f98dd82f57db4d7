// The model picker: the models the server offers, the conversation's model, the last choice.

import { api } from "./api.js";
import { $, el, toastError } from "./ui.js";

const LAST_MODEL_KEY = "chatplane.model";

export class ModelPicker {
  constructor() {
    this.select = $("model-select");
    this.models = [];
    this.defaultModel = "";
    this.userChanges = 0; // lets a slow conversation load know the user picked meanwhile
    this.select.addEventListener("change", () => {
      this.userChanges += 1;
      this.remember();
    });
  }

  async load() {
    try {
      const answer = await api.models();
      this.models = answer.models || [];
      this.defaultModel = answer.default_model || this.models[0]?.id || "";
    } catch (error) {
      toastError(error);
    }
    this.select.replaceChildren(
      ...this.models.map((m) =>
        el("option", { value: m.id, title: m.provider ? `${m.id} (${m.provider})` : m.id }, m.id),
      ),
    );
    this.select.disabled = this.models.length === 0;
    this.showPreferred();
  }

  /** The model a new chat starts with: the last one chosen, else the server's default. */
  showPreferred() {
    const last = localStorage.getItem(LAST_MODEL_KEY);
    this.show(this.isOffered(last) ? last : this.defaultModel);
  }

  show(model) {
    if (!model) return;
    if (!this.isOffered(model) && !this.select.querySelector(`option[value="${CSS.escape(model)}"]`)) {
      // A conversation may name a model that is no longer offered: show it anyway.
      this.select.append(el("option", { value: model }, `${model} (unavailable)`));
    }
    this.select.value = model;
  }

  get value() {
    return this.select.value || undefined;
  }

  remember() {
    if (this.value) localStorage.setItem(LAST_MODEL_KEY, this.value);
  }

  isOffered(model) {
    return Boolean(model) && this.models.some((m) => m.id === model);
  }
}
