// Citations under an answer: numbered sources (file, page); a source opens the exact passage
// it quotes. `[n]` markers in the answer's text become buttons that open the same passage.

import { el, icon } from "./ui.js";

let blockSeq = 0;

/** Citations as the API gives them, sorted by number, one per number. */
export function normalizeCitations(citations) {
  if (!Array.isArray(citations)) return [];
  const byNumber = new Map();
  for (const c of citations) {
    const n = Number(c?.n);
    if (Number.isInteger(n) && n > 0 && !byNumber.has(n)) byNumber.set(n, c);
  }
  return [...byNumber.entries()].sort((a, b) => a[0] - b[0]).map(([, c]) => c);
}

function sourceLabel(citation) {
  return citation.filename || "Document";
}

/** The sources block of one answer; `show(n)` opens a passage, `update` takes new citations. */
export class CitationBlock {
  constructor() {
    blockSeq += 1;
    this.id = `cites-${blockSeq}`;
    this.citations = [];
    this.openN = null;
    this.list = el("ol", { class: "cites-list" });
    this.quote = el("div", {
      class: "cite-quote",
      id: `${this.id}-quote`,
      role: "region",
      tabindex: "-1",
      hidden: true,
    });
    this.node = el(
      "div",
      { class: "cites", id: this.id, hidden: true },
      el("p", { class: "cites-head", id: `${this.id}-head` }, "Sources"),
      this.list,
      this.quote,
    );
    this.list.setAttribute("aria-labelledby", `${this.id}-head`);
    this.quote.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        const n = this.openN;
        this.hideQuote();
        this.chip(n)?.focus();
      }
    });
  }

  get numbers() {
    return new Set(this.citations.map((c) => Number(c.n)));
  }

  update(citations) {
    this.citations = normalizeCitations(citations);
    this.node.hidden = this.citations.length === 0;
    this.list.replaceChildren(
      ...this.citations.map((c) =>
        el(
          "li",
          { class: "cite", dataset: { n: String(c.n) } },
          el(
            "button",
            {
              class: "cite-chip",
              type: "button",
              "aria-expanded": "false",
              "aria-controls": this.quote.id,
              title: c.quote ? `“${truncate(c.quote, 160)}”` : sourceLabel(c),
              onclick: () => this.toggle(Number(c.n)),
            },
            el("span", { class: "cite-n" }, String(c.n)),
            el("span", { class: "cite-file" }, sourceLabel(c)),
            c.page ? el("span", { class: "cite-page" }, `p. ${c.page}`) : null,
          ),
        ),
      ),
    );
    if (this.openN !== null) {
      if (this.numbers.has(this.openN)) this.showQuote(this.openN);
      else this.hideQuote();
    }
  }

  chip(n) {
    return this.list.querySelector(`.cite[data-n="${n}"] .cite-chip`);
  }

  toggle(n) {
    if (this.openN === n) this.hideQuote();
    else this.showQuote(n);
  }

  /** Open the passage of source n; `focus` moves the keyboard there (from a marker). */
  showQuote(n, { focus = false } = {}) {
    const c = this.citations.find((x) => Number(x.n) === n);
    if (!c) return;
    this.openN = n;
    for (const chip of this.list.querySelectorAll(".cite-chip")) {
      const on = chip.closest(".cite").dataset.n === String(n);
      chip.setAttribute("aria-expanded", String(on));
      chip.classList.toggle("open", on);
    }
    this.quote.dataset.n = String(n);
    this.quote.setAttribute("aria-label", `Source ${n}: ${sourceLabel(c)}`);
    this.quote.replaceChildren(
      el(
        "div",
        { class: "cite-quote-head" },
        icon("quote"),
        el("span", { class: "cite-n" }, String(n)),
        el("span", { class: "cite-quote-file" }, sourceLabel(c)),
        c.page ? el("span", { class: "cite-page" }, `page ${c.page}`) : null,
        el(
          "button",
          {
            class: "icon-btn icon-btn-sm cite-close",
            type: "button",
            "aria-label": "Close passage",
            title: "Close",
            onclick: () => {
              this.hideQuote();
              this.chip(n)?.focus();
            },
          },
          icon("x"),
        ),
      ),
      el("blockquote", { class: "cite-text" }, c.quote || "(no passage text)"),
    );
    this.quote.hidden = false;
    if (focus) this.quote.focus();
  }

  hideQuote() {
    this.openN = null;
    this.quote.hidden = true;
    for (const chip of this.list.querySelectorAll(".cite-chip")) {
      chip.setAttribute("aria-expanded", "false");
      chip.classList.remove("open");
    }
  }
}

function truncate(text, max) {
  const t = String(text).replace(/\s+/g, " ").trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

const MARKER = /\[(\d{1,3})\]/g;

/**
 * Turn `[n]` in the rendered answer into buttons that open source n, for the numbers that
 * have a citation; code stays as written. Works on the DOM, after the Markdown was rendered
 * (and escaped), so no text ever becomes markup.
 */
export function linkMarkers(root, numbers, onOpen) {
  if (numbers.size === 0) return;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) =>
      node.parentElement?.closest("code, pre, a, button") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  const texts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (MARKER.test(node.nodeValue)) texts.push(node);
    MARKER.lastIndex = 0;
  }
  for (const node of texts) {
    const text = node.nodeValue;
    const parts = [];
    let last = 0;
    for (const match of text.matchAll(MARKER)) {
      const n = Number(match[1]);
      if (!numbers.has(n)) continue;
      if (match.index > last) parts.push(document.createTextNode(text.slice(last, match.index)));
      parts.push(
        el(
          "button",
          {
            class: "cite-ref",
            type: "button",
            dataset: { n: String(n) },
            "aria-label": `Source ${n}`,
            onclick: () => onOpen(n),
          },
          String(n),
        ),
      );
      last = match.index + match[0].length;
    }
    if (parts.length === 0) continue;
    if (last < text.length) parts.push(document.createTextNode(text.slice(last)));
    node.replaceWith(...parts);
  }
}
