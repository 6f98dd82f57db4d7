// The knowledge picker next to the model picker: which knowledge bases the open chat searches.
// With a chat open, a change is saved on the conversation at once (PATCH); on the empty
// screen the choice waits and goes with the new conversation when it is created.

import { kbApi } from "./kb-api.js";
import { $, el } from "./ui.js";

export class KnowledgePicker {
  /** @param {{onChange: (ids: string[]) => Promise<boolean>}} hooks onChange saves; false undoes */
  constructor({ onChange }) {
    this.onChange = onChange;
    this.root = $("kb-picker");
    this.button = $("kb-picker-button");
    this.panel = $("kb-picker-panel");
    this.list = $("kb-picker-list");
    this.empty = $("kb-picker-empty");
    this.count = $("kb-picker-count");
    this.bases = [];
    this.selected = [];
    this.loaded = false;
    this.loading = null;
    this.changes = 0; // lets a slow conversation load know the user picked meanwhile

    this.button.addEventListener("click", () => (this.isOpen ? this.close() : this.open()));
    this.root.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.isOpen) {
        event.preventDefault();
        event.stopPropagation();
        this.close({ focus: true });
      }
    });
    document.addEventListener("pointerdown", (event) => {
      if (this.isOpen && !this.root.contains(event.target)) this.close();
    });
    this.root.addEventListener("focusout", (event) => {
      if (this.isOpen && event.relatedTarget && !this.root.contains(event.relatedTarget)) this.close();
    });
    $("kb-picker-manage").addEventListener("click", () => this.close());
  }

  get isOpen() {
    return !this.panel.hidden;
  }

  /** The knowledge bases the user can see; asked again whenever the panel opens. */
  load() {
    this.loading ??= kbApi
      .list()
      .then((answer) => {
        this.bases = answer.items || [];
        this.loaded = true;
      })
      .catch((error) => {
        // Not fatal for the chat: the panel says it could not list them.
        console.warn(error);
        this.loaded = false;
      })
      .finally(() => {
        this.loading = null;
        this.render();
      });
    return this.loading;
  }

  async open() {
    this.panel.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    this.render();
    await this.load();
    if (this.isOpen) (this.list.querySelector("input") || $("kb-picker-manage")).focus();
  }

  close({ focus = false } = {}) {
    this.panel.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
    if (focus) this.button.focus();
  }

  /** The selection of the chat that opened (or [] for the empty screen). */
  set(ids) {
    this.selected = Array.isArray(ids) ? [...ids] : [];
    this.render();
  }

  get value() {
    return [...this.selected];
  }

  render() {
    const known = new Set(this.bases.map((kb) => kb.id));
    const rows = [
      ...this.bases.map((kb) => this.option(kb.id, kb.name, `${kb.documents ?? 0} doc${kb.documents === 1 ? "" : "s"}`)),
      // A chat may name a knowledge base that was deleted or is no longer shared.
      ...this.selected.filter((id) => this.loaded && !known.has(id)).map((id) => this.option(id, "Unavailable knowledge base", "")),
    ];
    this.list.replaceChildren(...rows);
    this.empty.hidden = rows.length > 0;
    this.empty.textContent = this.loading && !this.loaded
      ? "Loading…"
      : this.loaded
        ? "No knowledge bases yet."
        : "Could not list the knowledge bases.";
    this.renderSummary();
  }

  /** The button: how many are attached, their names on hover. */
  renderSummary() {
    const n = this.selected.length;
    this.count.textContent = String(n);
    this.count.hidden = n === 0;
    this.root.classList.toggle("active", n > 0);
    const names = this.selected.map((id) => this.bases.find((kb) => kb.id === id)?.name).filter(Boolean);
    this.button.title = n ? `Knowledge: ${names.join(", ") || `${n} selected`}` : "Knowledge bases for this chat";
    this.button.setAttribute("aria-label", n ? `Knowledge bases (${n} attached)` : "Knowledge bases");
  }

  option(id, name, note) {
    const input = el("input", { type: "checkbox", value: id, checked: this.selected.includes(id) });
    input.addEventListener("change", () => this.toggle(id, input.checked));
    return el(
      "li",
      { class: "kb-option", dataset: { id } },
      el(
        "label",
        {},
        input,
        el("span", { class: "kb-option-name" }, name),
        note ? el("span", { class: "kb-option-note" }, note) : null,
      ),
    );
  }

  async toggle(id, on) {
    this.changes += 1;
    const before = this.selected;
    this.selected = on ? [...before.filter((x) => x !== id), id] : before.filter((x) => x !== id);
    this.renderSummary();
    const saved = await this.onChange(this.value);
    if (!saved) {
      this.selected = before;
      this.render();
    }
  }
}
