// The message thread: user bubbles, assistant answers rendered as Markdown, live streaming.

import { CitationBlock, linkMarkers } from "./citations.js";
import { renderMarkdown } from "./markdown.js";
import { $, copyText, el, icon } from "./ui.js";

const STICKY_PX = 96; // within this distance of the bottom, new text keeps the view pinned

export class Thread {
  constructor() {
    this.list = $("thread");
    this.scroller = $("thread-scroll");
    this.welcome = $("welcome");
    this.list.addEventListener("click", (event) => this.onClick(event));
  }

  clear() {
    delete this.list.dataset.conversationId;
    this.list.replaceChildren();
    this.updateWelcome();
  }

  showMessages(messages, conversationId) {
    this.list.dataset.conversationId = conversationId;
    this.list.replaceChildren(
      ...messages.map((m) =>
        m.role === "user" ? userMessage(m) : new AssistantMessage(this, m).node,
      ),
    );
    this.updateWelcome();
    this.scrollToBottom();
  }

  addUser(content) {
    const node = userMessage({ content, pending: true });
    this.list.append(node);
    this.updateWelcome();
    this.scrollToBottom();
    return node;
  }

  /** A new assistant message that receives streamed text. */
  addAssistant({ turnId }) {
    const message = new AssistantMessage(this, { content: "", status: "streaming", turnId });
    this.list.append(message.node);
    this.updateWelcome();
    this.scrollToBottom();
    return message;
  }

  updateWelcome() {
    this.welcome.hidden = this.list.children.length > 0;
  }

  isNearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < STICKY_PX;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  async onClick(event) {
    const button = event.target.closest("[data-copy-code], [data-copy-message]");
    if (!button) return;
    const text = button.hasAttribute("data-copy-code")
      ? button.closest(".code-block").querySelector("code").textContent
      : button.closest(".msg").querySelector(".md").dataset.source ?? "";
    const ok = await copyText(text);
    const label = button.querySelector(".copy-label") || button;
    const before = label.textContent;
    label.textContent = ok ? "Copied" : "Copy failed";
    button.classList.add("copied");
    setTimeout(() => {
      label.textContent = before;
      button.classList.remove("copied");
    }, 1500);
  }
}

function userMessage({ id, content, pending = false }) {
  return el(
    "li",
    { class: "msg msg-user", dataset: { role: "user", ...(id ? { messageId: id } : {}) } },
    el("div", { class: `bubble${pending ? " pending" : ""}` }, content),
  );
}

/** One assistant answer; re-renders its Markdown at most once per frame while streaming. */
export class AssistantMessage {
  constructor(thread, { id, content, status = "completed", turnId, citations = null }) {
    this.thread = thread;
    this.source = content || "";
    this.frame = 0;
    this.body = el("div", { class: "md" });
    this.cites = new CitationBlock();
    this.cites.update(citations);
    this.note = el("div", { class: "msg-note", hidden: true });
    this.actions = el(
      "div",
      { class: "msg-actions" },
      el(
        "button",
        { class: "msg-action", type: "button", "data-copy-message": true, title: "Copy answer" },
        icon("copy"),
        el("span", { class: "copy-label" }, "Copy"),
      ),
    );
    this.node = el(
      "li",
      {
        class: "msg msg-assistant",
        dataset: { role: "assistant", ...(id ? { messageId: id } : {}), ...(turnId ? { turnId } : {}) },
      },
      el("div", { class: "msg-avatar", "aria-hidden": "true" }, svgLogo()),
      el(
        "div",
        { class: "msg-main" },
        this.body,
        this.cites.node,
        el("div", { class: "msg-foot" }, this.note, this.actions),
      ),
    );
    this.node.dataset.citations = String(this.cites.citations.length);
    this.setStatus(status);
    this.paint();
  }

  setText(text) {
    this.source = text;
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      const stick = this.thread.isNearBottom();
      this.paint();
      if (stick) this.thread.scrollToBottom();
    });
  }

  paint() {
    this.body.innerHTML = renderMarkdown(this.source); // safe: renderMarkdown escapes all text
    linkMarkers(this.body, this.cites.numbers, (n) => this.cites.showQuote(n, { focus: true }));
    this.body.dataset.source = this.source;
    this.body.classList.toggle("empty", this.source.length === 0);
  }

  /** The sources of the answer (`turn.citations`, or the stored message's). */
  setCitations(citations) {
    this.cites.update(citations);
    this.node.dataset.citations = String(this.cites.citations.length);
    if (!this.frame) this.paint(); // link the [n] markers already shown
  }

  /** streaming | queued | completed | cancelled | failed */
  setStatus(status, { error = null, reconnecting = false } = {}) {
    this.node.dataset.status = status;
    const live = status === "streaming" || status === "queued" || status === "running";
    this.node.classList.toggle("streaming", live);
    this.actions.hidden = live || this.source.length === 0;
    let note = "";
    if (reconnecting) note = "Reconnecting…";
    else if (status === "cancelled") note = this.source ? "Stopped" : "Stopped before any answer";
    else if (status === "failed") note = `Failed: ${error?.message || error?.code || "the model did not answer"}`;
    this.note.textContent = note;
    this.note.hidden = !note;
    this.note.classList.toggle("note-error", status === "failed");
  }

  finish({ status, error, messageId, text }) {
    if (typeof text === "string") this.source = text;
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    const stick = this.thread.isNearBottom();
    this.paint();
    if (messageId) this.node.dataset.messageId = messageId;
    this.setStatus(status, { error });
    if (stick) this.thread.scrollToBottom();
  }
}

function svgLogo() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 32 32");
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", "/static/icons.svg#logo");
  svg.append(use);
  return svg;
}
