// The conversation list: newest first, "load more" by cursor, inline rename, delete.

import { $, el, icon, shortDate } from "./ui.js";

export const UNTITLED = "New chat";

export function titleOf(conversation) {
  const title = (conversation?.title || "").trim();
  return title || UNTITLED;
}

export class Sidebar {
  /**
   * @param {{onRename: (id: string, title: string) => Promise<void>,
   *          onDelete: (conversation: object) => void, onLoadMore: () => void,
   *          onNavigate: () => void}} actions
   */
  constructor(actions) {
    this.actions = actions;
    this.items = [];
    this.nextCursor = null;
    this.activeId = null;
    this.editingId = null;
    this.editNode = null; // the row holding the rename field, kept across renders
    // While the first page is being (re)loaded, the local changes made meanwhile: its
    // answer predates them, so they are replayed onto it (null: no load on its way).
    this.changes = null;
    this.list = $("conv-list");
    $("load-more").addEventListener("click", () => this.actions.onLoadMore());
  }

  reset() {
    this.items = [];
    this.changes = null;
    this.nextCursor = null;
    this.activeId = null;
    this.editingId = null;
    this.editNode = null;
    this.render();
  }

  /** The first page is requested: record the changes made until its answer (`setPage`) or
   * its failure (`loadFailed`), e.g. a chat created before the list came. */
  loadStarted() {
    this.changes = [];
  }

  loadFailed() {
    this.changes = null;
  }

  setPage(items, nextCursor, { append = false } = {}) {
    const known = new Set(append ? this.items.map((c) => c.id) : []);
    const fresh = items.filter((c) => !known.has(c.id));
    this.items = append ? [...this.items, ...fresh] : [...items];
    this.nextCursor = nextCursor || null;
    if (!append && this.changes) {
      const changes = this.changes;
      this.changes = null;
      for (const change of changes) change();
    }
    this.render();
  }

  get(id) {
    return this.items.find((c) => c.id === id) || null;
  }

  /** Insert or update a conversation; `toTop` moves it first (it was just active). */
  upsert(conversation, { toTop = false } = {}) {
    this.changes?.push(() => this.place(conversation, toTop));
    this.place(conversation, toTop);
    this.render();
  }

  place(conversation, toTop) {
    const index = this.items.findIndex((c) => c.id === conversation.id);
    const merged = { ...(index >= 0 ? this.items[index] : {}), ...conversation };
    if (index >= 0) this.items.splice(index, 1);
    if (toTop || index < 0) this.items.unshift(merged);
    else this.items.splice(index, 0, merged);
  }

  remove(id) {
    this.changes?.push(() => this.drop(id));
    this.drop(id);
    this.render();
  }

  drop(id) {
    this.items = this.items.filter((c) => c.id !== id);
  }

  setActive(id) {
    this.activeId = id;
    for (const item of this.list.children) {
      const active = item.dataset.id === id;
      item.classList.toggle("active", active);
      item.querySelector(".conv-link")?.toggleAttribute("aria-current", active);
    }
  }

  startRename(id) {
    this.editingId = id;
    this.editNode = null;
    this.render();
    const input = this.editNode?.querySelector(".rename-input");
    input?.focus();
    input?.select();
  }

  render() {
    const nodes = this.items.map((c) => {
      if (c.id !== this.editingId) return this.renderItem(c);
      this.editNode ??= this.renderItem(c);
      return this.editNode;
    });
    // Rows are rebuilt, except the one being renamed: it stays in the document so the field
    // keeps its focus and text while the list changes around it (a reply moving a chat up).
    const keep = nodes.includes(this.editNode) ? this.editNode : null;
    for (const child of [...this.list.children]) if (child !== keep) child.remove();
    let ref = this.list.firstChild;
    for (const node of nodes) {
      if (node === ref) ref = ref.nextSibling;
      else this.list.insertBefore(node, ref);
    }
    $("conv-empty").hidden = this.items.length > 0;
    $("load-more").hidden = !this.nextCursor;
  }

  renderItem(conversation) {
    const active = conversation.id === this.activeId;
    const item = el("li", {
      class: `conv-item${active ? " active" : ""}`,
      dataset: { id: conversation.id },
    });

    if (conversation.id === this.editingId) {
      item.append(this.renderRenameInput(conversation));
      return item;
    }

    item.append(
      el(
        "a",
        {
          class: "conv-link",
          href: `#/c/${encodeURIComponent(conversation.id)}`,
          "aria-current": active ? "page" : null,
          title: titleOf(conversation),
          onclick: () => this.actions.onNavigate(),
        },
        el("span", { class: "conv-name" }, titleOf(conversation)),
        el("span", { class: "conv-date" }, shortDate(conversation.updated_at || conversation.created_at)),
      ),
      el(
        "div",
        { class: "conv-actions" },
        el(
          "button",
          {
            class: "icon-btn icon-btn-sm conv-rename",
            type: "button",
            title: "Rename",
            "aria-label": `Rename ${titleOf(conversation)}`,
            onclick: () => this.startRename(conversation.id),
          },
          icon("pencil"),
        ),
        el(
          "button",
          {
            class: "icon-btn icon-btn-sm conv-delete",
            type: "button",
            title: "Delete",
            "aria-label": `Delete ${titleOf(conversation)}`,
            onclick: () => this.actions.onDelete(conversation),
          },
          icon("trash"),
        ),
      ),
    );
    return item;
  }

  renderRenameInput(conversation) {
    let done = false;
    const input = el("input", {
      class: "rename-input",
      type: "text",
      maxlength: 200,
      "aria-label": "Conversation title",
    });
    input.value = conversation.title || "";

    const finish = async (save) => {
      if (done) return;
      done = true;
      this.editingId = null;
      this.editNode = null;
      const title = input.value.trim();
      if (save && title && title !== conversation.title) {
        // Show the new name at once; the handler restores the old one if the server refuses.
        this.upsert({ id: conversation.id, title });
        await this.actions.onRename(conversation.id, title, conversation.title);
      } else {
        this.render();
      }
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing) {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
    return input;
  }
}
