// The retrieval test ("hit test") of a knowledge base: a question, the ranked passages.

import { cardHead, loading, muted } from "./admin-ui.js";
import { kbApi } from "./kb-api.js";
import { plural } from "./kb-format.js";
import { el } from "./ui.js";

/** The card with the search box; results show the passages in rank order with scores. */
export function retrievalTestCard(kbId) {
  const input = el("input", {
    id: "kb-search-input",
    class: "kb-search-input",
    type: "search",
    name: "query",
    required: true,
    maxlength: 2000,
    placeholder: "Ask something the documents answer",
    autocomplete: "off",
    "aria-label": "Test question",
  });
  const submit = el("button", { class: "btn btn-primary", type: "submit", id: "kb-search-submit" }, "Search");
  const results = el("div", { id: "kb-results", class: "kb-results", "aria-live": "polite" });
  const form = el("form", { class: "kb-search", id: "kb-search-form", role: "search" }, input, submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = input.value.trim();
    if (!query) return;
    submit.disabled = true;
    results.replaceChildren(loading("Searching…"));
    try {
      const answer = await kbApi.search(kbId, query);
      results.replaceChildren(searchResults(answer));
      results.scrollIntoView({ block: "nearest" });
    } catch (error) {
      results.replaceChildren(el("p", { class: "form-error", role: "alert" }, error?.userMessage || "The search failed."));
    } finally {
      submit.disabled = false;
    }
  });
  return el(
    "section",
    { class: "adm-card", id: "kb-search" },
    cardHead("Test retrieval", "See which passages a question finds, and how they rank. Chats attached to this knowledge base get the same passages."),
    el("div", { class: "adm-card-pad" }, form, results),
  );
}

function searchResults(answer) {
  const results = answer?.results || [];
  const mode = answer?.mode === "hybrid" ? "Keywords + embeddings" : "Keywords";
  if (results.length === 0) {
    return el("p", { class: "kb-no-results" }, "No passage matches this question.");
  }
  return el(
    "div",
    {},
    el("p", { class: "kb-results-head" }, `${plural(results.length, "passage")} · ${mode}`),
    el(
      "ol",
      { class: "kb-hits" },
      results.map((hit, index) =>
        el(
          "li",
          { class: "kb-hit", dataset: { chunkId: String(hit.chunk_id), documentId: hit.document_id } },
          el(
            "div",
            { class: "kb-hit-head" },
            el("span", { class: "kb-hit-rank" }, String(index + 1)),
            el(
              "span",
              { class: "kb-hit-source" },
              el("span", { class: "kb-hit-file" }, hit.filename || "Document"),
              hit.page ? muted(` · page ${hit.page}`) : null,
              hit.heading ? muted(` · ${hit.heading}`) : null,
            ),
            el("span", { class: "kb-hit-score", title: "Score (higher ranks first)" }, formatScore(hit.score)),
          ),
          el("p", { class: "kb-hit-text" }, hit.text),
        ),
      ),
    ),
  );
}

function formatScore(score) {
  const n = Number(score);
  if (!Number.isFinite(n)) return "";
  // Three significant digits: fused ranks are small numbers, raw lexical scores larger ones.
  return `score ${Math.abs(n) >= 100 ? n.toFixed(0) : String(Number(n.toPrecision(3)))}`;
}

