// The knowledge pages of the chat app: `#/kb` lists the knowledge bases, `#/kb/<id>` opens
// one (upload with progress, the documents and their indexing status, a retrieval test).

import {
  badge,
  button,
  card,
  cardHead,
  dataTable,
  emptyState,
  formDialog,
  formValue,
  loading,
  pageHeader,
  primaryButton,
  selectField,
  textField,
  when,
} from "./admin-ui.js";
import { followDocument, kbApi, uploadDocument } from "./kb-api.js";
import { STATUS, failureText, formatBytes, plural, stageText } from "./kb-format.js";
import { retrievalTestCard } from "./kb-search.js";
import { UploadRow, dropZone } from "./kb-upload.js";
import { $, confirmDialog, el, icon, toast, toastError } from "./ui.js";

const DOC_PAGE = 50;
const MAX_FOLLOWED = 20; // indexing streams one page keeps open at most

export const VISIBILITY = {
  private: { label: "Private", tone: "neutral", hint: "Only you" },
  tenant: { label: "Organisation", tone: "info", hint: "Everyone in your organisation" },
};

export class KnowledgePages {
  /** @param {{onChange: () => void}} hooks onChange: the list of knowledge bases changed */
  constructor({ onChange }) {
    this.onChange = onChange;
    this.root = $("kb-page");
    this.scroller = $("kb-scroll");
    this.seq = 0; // guards against out-of-order loads when the route changes
    this.kb = null;
    this.followers = new Map(); // document id -> {close}
    this.uploads = new Map(); // document id -> upload row (to update from its events)
    this.stages = new Map(); // document id -> its last indexing event (stage, done, total)
  }

  /** Show the list (`kbId` null) or one knowledge base. */
  show(kbId) {
    this.leave();
    const seq = ++this.seq;
    this.scroller.scrollTop = 0;
    if (kbId) this.renderDetail(kbId, seq);
    else this.renderList(seq);
  }

  /** Stop the page's streams (the route changed); uploads already sent keep indexing. */
  leave() {
    this.seq += 1;
    for (const follower of this.followers.values()) follower.close();
    this.followers.clear();
    this.uploads.clear();
    this.stages.clear();
    this.kb = null;
    this.docs = [];
  }

  // ---------------------------------------------------------------- the list

  renderList(seq) {
    document.title = "Knowledge · chatplane";
    const body = el("div", { class: "adm-card-body" }, loading());
    this.root.replaceChildren(
      el(
        "div",
        { class: "adm-page-inner kb-list-page" },
        pageHeader({
          title: "Knowledge",
          description:
            "Documents the assistant can search and cite. Attach a knowledge base to a chat with the Knowledge button next to the model.",
          actions: [primaryButton("New knowledge base", () => this.createKb(), { id: "kb-new" })],
        }),
        card(body),
      ),
    );
    this.loadList(body, seq);
  }

  async loadList(body, seq) {
    let items;
    try {
      items = (await kbApi.list()).items || [];
    } catch (error) {
      if (seq !== this.seq) return;
      toastError(error);
      body.replaceChildren(emptyState("log", "Could not load the knowledge bases", error?.userMessage));
      return;
    }
    if (seq !== this.seq) return;
    if (items.length === 0) {
      body.replaceChildren(
        el(
          "div",
          { id: "kb-empty" },
          emptyState("log", "No knowledge bases yet", "Create one, add documents, then attach it to a chat."),
        ),
      );
      return;
    }
    body.replaceChildren(
      dataTable({
        label: "Knowledge bases",
        rowClass: "kb-row",
        columns: [
          { label: "Name", class: "col-main" },
          { label: "Visibility" },
          { label: "Documents" },
          { label: "Updated" },
          { label: "Actions", class: "col-actions" },
        ],
        rows: items.map((kb) => ({
          dataset: { id: kb.id, name: kb.name },
          cells: [
            el(
              "div",
              { class: "kb-name-cell" },
              el("a", { class: "kb-link", href: `#/kb/${encodeURIComponent(kb.id)}` }, kb.name),
              kb.description ? el("span", { class: "kb-desc" }, kb.description) : null,
            ),
            visibilityBadge(kb.visibility),
            el("span", { class: "kb-doc-count" }, String(kb.documents ?? 0)),
            when(kb.updated_at || kb.created_at),
            el(
              "div",
              { class: "adm-row-actions" },
              kb.can_edit
                ? [
                    button("Edit", {
                      iconName: null,
                      className: "kb-edit",
                      "aria-label": `Edit ${kb.name}`,
                      onclick: () => this.editKb(kb, () => this.show(null)),
                    }),
                    button("Delete", {
                      kind: "danger-soft",
                      className: "kb-delete",
                      "aria-label": `Delete ${kb.name}`,
                      onclick: () => this.deleteKb(kb, () => this.show(null)),
                    }),
                  ]
                : null,
            ),
          ],
        })),
      }),
    );
  }

  kbFields(kb = null) {
    return [
      textField({
        label: "Name",
        name: "name",
        value: kb?.name ?? "",
        required: true,
        maxlength: 200,
        autocomplete: "off",
        placeholder: "Product handbook",
      }),
      el(
        "label",
        { class: "field adm-field" },
        el("span", {}, "Description"),
        (() => {
          const area = el("textarea", {
            name: "description",
            rows: 3,
            maxlength: 2000,
            class: "kb-textarea",
            placeholder: "What is in it (optional)",
          });
          area.value = kb?.description ?? "";
          return area;
        })(),
      ),
      selectField({
        label: "Who can use it",
        name: "visibility",
        value: kb?.visibility ?? "private",
        options: Object.entries(VISIBILITY).map(([value, v]) => [value, `${v.label}: ${v.hint.toLowerCase()}`]),
        hint: "Either way, only you and your organisation's admins can change it or add documents.",
      }),
    ];
  }

  async createKb() {
    const created = await formDialog({
      title: "New knowledge base",
      description: "A collection of documents that chats can search and cite.",
      body: this.kbFields(),
      submitLabel: "Create",
      onSubmit: async (form) =>
        kbApi.create({
          name: formValue(form, "name"),
          description: formValue(form, "description"),
          visibility: formValue(form, "visibility") || "private",
        }),
    });
    if (!created?.id) return;
    this.onChange();
    location.hash = `#/kb/${encodeURIComponent(created.id)}`;
  }

  async editKb(kb, after) {
    const updated = await formDialog({
      title: "Edit knowledge base",
      description: "Rename it, describe it, or change who can use it.",
      body: this.kbFields(kb),
      submitLabel: "Save",
      onSubmit: async (form) =>
        kbApi.update(kb.id, {
          name: formValue(form, "name"),
          description: formValue(form, "description"),
          visibility: formValue(form, "visibility") || kb.visibility,
        }),
    });
    if (!updated?.id) return;
    toast("Knowledge base saved", { kind: "info" });
    this.onChange();
    after();
  }

  async deleteKb(kb, after) {
    const ok = await confirmDialog({
      title: "Delete knowledge base?",
      text: `“${kb.name}” and its ${plural(kb.documents ?? 0, "document")} will be deleted; chats that use it will not find them any more. This cannot be undone.`,
    });
    if (!ok) return;
    try {
      await kbApi.remove(kb.id);
    } catch (error) {
      if (error?.status !== 404) {
        toastError(error);
        return;
      }
    }
    toast("Knowledge base deleted", { kind: "info" });
    this.onChange();
    after();
  }

  // ---------------------------------------------------------------- one knowledge base

  async renderDetail(kbId, seq) {
    this.root.replaceChildren(el("div", { class: "adm-page-inner" }, backLink(), loading()));
    let kb;
    try {
      kb = await kbApi.get(kbId);
    } catch (error) {
      if (seq !== this.seq) return;
      toastError(error);
      this.root.replaceChildren(
        el(
          "div",
          { class: "adm-page-inner" },
          backLink(),
          card(emptyState("log", "This knowledge base cannot be opened", error?.userMessage)),
        ),
      );
      return;
    }
    if (seq !== this.seq) return;
    this.kb = kb;
    document.title = `${kb.name} · Knowledge · chatplane`;

    this.docBody = el("div", { class: "adm-card-body" }, loading());
    this.docMore = el("button", { class: "btn btn-ghost btn-sm", type: "button", hidden: true }, "Load more");
    this.docMore.addEventListener("click", () => this.loadDocuments({ append: true }));
    this.docCount = el("span", { id: "kb-doc-total" });
    this.nextCursor = null;

    const actions = kb.can_edit
      ? [
          button("Edit", { className: "kb-edit", size: "md", onclick: () => this.editKb(kb, () => this.show(kb.id)) }),
          button("Delete", {
            kind: "danger-soft",
            size: "md",
            className: "kb-delete",
            onclick: () => this.deleteKb(kb, () => (location.hash = "#/kb")),
          }),
        ]
      : [];

    this.root.replaceChildren(
      el(
        "div",
        { class: "adm-page-inner kb-detail", dataset: { id: kb.id } },
        backLink(),
        pageHeader({ title: kb.name, description: kb.description || null, actions }),
        el(
          "div",
          { class: "kb-meta" },
          visibilityBadge(kb.visibility),
          el("span", {}, kb.embedding_model ? `Search: keywords + ${kb.embedding_model}` : "Search: keywords"),
          kb.can_edit ? null : el("span", {}, "Read only: ask its owner to add documents."),
        ),
        kb.can_edit ? this.uploadCard() : null,
        el(
          "section",
          { class: "adm-card", id: "kb-documents" },
          el("div", { class: "adm-card-head" }, el("div", {}, el("h3", {}, "Documents"), el("p", {}, this.docCount))),
          this.docBody,
          el("div", { class: "adm-card-foot" }, this.docMore),
        ),
        retrievalTestCard(kb.id),
      ),
    );
    this.loadDocuments();
  }

  uploadCard() {
    const drop = dropZone((files) => this.uploadFiles(files));
    this.uploadList = el("ul", { id: "kb-uploads", class: "kb-uploads", "aria-label": "Uploads", hidden: true });
    return el(
      "section",
      { class: "adm-card", id: "kb-upload" },
      cardHead("Add documents", "Each file is read, split into passages and indexed; then chats can cite it."),
      el("div", { class: "adm-card-pad" }, drop, this.uploadList),
    );
  }

  uploadFiles(files) {
    if (!files.length || !this.kb) return;
    this.uploadList.hidden = false;
    for (const file of files) this.uploadOne(this.kb.id, file, this.seq);
  }

  async uploadOne(kbId, file, seq) {
    const row = new UploadRow(file);
    this.uploadList.prepend(row.node);
    const upload = uploadDocument(kbId, file, { onProgress: (loaded, total) => row.progress(loaded, total) });
    row.onCancel = () => upload.abort();
    let accepted;
    try {
      accepted = await upload.done;
    } catch (error) {
      if (error?.name === "AbortError") {
        row.node.remove();
        return;
      }
      console.warn(error);
      row.error(error?.userMessage || error?.message || "The upload failed.");
      return;
    }
    if (seq !== this.seq) return; // the page changed while uploading; the document still indexes
    const docId = accepted.document_id;
    row.node.dataset.documentId = docId;
    if (accepted.duplicate) {
      row.duplicate(accepted.status);
      this.loadDocuments();
      return;
    }
    row.setStatus(accepted.status || "queued");
    this.uploads.set(docId, row);
    this.loadDocuments();
    this.follow(docId, accepted.events_url);
  }

  /** Follow a document's indexing events; updates its upload row and its list row. */
  follow(docId, url) {
    if (this.followers.has(docId) || !this.kb) return;
    if (this.followers.size >= MAX_FOLLOWED && !url) return;
    const kbId = this.kb.id;
    const seq = this.seq;
    const follower = followDocument({
      kbId,
      docId,
      url,
      onEvent: (status, data) => {
        if (seq !== this.seq) return;
        this.uploads.get(docId)?.setStatus(status, data);
        this.updateDocRow(docId, status, data);
      },
      onEnd: (end) => {
        this.followers.delete(docId);
        if (seq !== this.seq) return;
        const row = this.uploads.get(docId);
        if (end.status === "ready") row?.ready(end.chunks);
        else row?.error(failureText(end.error), "failed");
        this.loadDocuments();
      },
    });
    this.followers.set(docId, follower);
  }

  async loadDocuments({ append = false } = {}) {
    if (!this.kb) return;
    const kb = this.kb;
    const seq = this.seq;
    this.docMore.disabled = true;
    let page;
    try {
      page = await kbApi.documents(kb.id, { limit: DOC_PAGE, cursor: append ? this.nextCursor : null });
    } catch (error) {
      if (seq !== this.seq) return;
      toastError(error);
      if (!append) this.docBody.replaceChildren(emptyState("log", "Could not load the documents", error?.userMessage));
      return;
    } finally {
      this.docMore.disabled = false;
    }
    if (seq !== this.seq) return;
    const items = page.items || [];
    this.docs = append ? [...(this.docs || []), ...items.filter((d) => !this.docs?.some((o) => o.id === d.id))] : items;
    this.nextCursor = page.next_cursor || null;
    this.docMore.hidden = !this.nextCursor;
    this.renderDocuments();
    for (const doc of items) {
      if (doc.status === "queued" || doc.status === "indexing") this.follow(doc.id);
    }
  }

  renderDocuments() {
    const docs = this.docs || [];
    const more = this.nextCursor ? "+" : "";
    this.docCount.textContent = docs.length ? `${plural(docs.length, "document")}${more}` : "";
    if (docs.length === 0) {
      this.docBody.replaceChildren(
        el(
          "div",
          { id: "kb-docs-empty" },
          emptyState("log", "No documents yet", this.kb?.can_edit ? "Add files above; they are indexed in the background." : null),
        ),
      );
      return;
    }
    const canEdit = this.kb?.can_edit;
    this.docBody.replaceChildren(
      dataTable({
        label: "Documents",
        rowClass: "kb-doc",
        columns: [
          { label: "Document", class: "col-main" },
          { label: "Status", class: "col-detail" },
          { label: "Passages" },
          { label: "Size" },
          { label: "Added" },
          { label: "Actions", class: "col-actions" },
        ],
        rows: docs.map((doc) => ({
          dataset: { id: doc.id, name: doc.filename, status: doc.status },
          cells: [
            el(
              "div",
              { class: "kb-file" },
              el("span", { class: "kb-file-icon" }, icon("file")),
              el(
                "span",
                { class: "kb-file-text" },
                el("span", { class: "kb-file-name" }, doc.filename),
                el("span", { class: "kb-file-type" }, [typeName(doc.media_type), doc.pages ? plural(doc.pages, "page") : null].filter(Boolean).join(" · ")),
              ),
            ),
            statusCell(doc.status, doc.error, this.stages.get(doc.id)),
            el("span", { class: "kb-chunks" }, doc.status === "ready" ? String(doc.chunks ?? 0) : "–"),
            el("span", { class: "kb-size" }, formatBytes(doc.size_bytes)),
            when(doc.created_at),
            el(
              "div",
              { class: "adm-row-actions" },
              el(
                "a",
                {
                  class: "btn btn-outline btn-sm kb-download",
                  href: kbApi.contentUrl(doc.kb_id || this.kb.id, doc.id),
                  download: doc.filename,
                  "aria-label": `Download ${doc.filename}`,
                },
                "Download",
              ),
              canEdit
                ? button("Delete", {
                    kind: "danger-soft",
                    className: "kb-doc-delete",
                    "aria-label": `Delete ${doc.filename}`,
                    onclick: () => this.deleteDocument(doc),
                  })
                : null,
            ),
          ],
        })),
      }),
    );
  }

  updateDocRow(docId, status, data) {
    if (status === "indexing" && data?.stage) this.stages.set(docId, data);
    const doc = this.docs?.find((d) => d.id === docId);
    if (!doc || (doc.status === status && status !== "indexing")) return;
    doc.status = status;
    const row = this.docBody.querySelector(`.kb-doc[data-id="${CSS.escape(docId)}"]`);
    if (!row) return;
    row.dataset.status = status;
    const cell = row.querySelector(".kb-status");
    cell?.replaceWith(statusCell(status, null, data));
  }

  async deleteDocument(doc) {
    const ok = await confirmDialog({
      title: "Delete document?",
      text: `“${doc.filename}” and its passages leave the knowledge base at once. This cannot be undone.`,
    });
    if (!ok || !this.kb) return;
    try {
      await kbApi.removeDocument(this.kb.id, doc.id);
    } catch (error) {
      if (error?.status !== 404) {
        toastError(error);
        return;
      }
    }
    this.followers.get(doc.id)?.close();
    this.followers.delete(doc.id);
    this.docs = (this.docs || []).filter((d) => d.id !== doc.id);
    this.renderDocuments();
    toast("Document deleted", { kind: "info" });
    this.onChange();
  }

}

// ---------------------------------------------------------------- parts

function backLink() {
  return el("a", { class: "kb-back", href: "#/kb" }, "← All knowledge bases");
}

export function visibilityBadge(visibility) {
  const v = VISIBILITY[visibility] || { label: visibility, tone: "neutral", hint: "" };
  const node = badge(v.label, v.tone);
  node.classList.add("kb-visibility");
  if (v.hint) node.title = v.hint;
  return node;
}

function statusCell(status, error, data) {
  const s = STATUS[status] || { label: status, tone: "neutral" };
  const detail =
    status === "failed" ? failureText(error) : status === "indexing" && data?.stage ? stageText(data) : null;
  return el(
    "span",
    { class: "adm-status kb-status", dataset: { status } },
    badge(s.label, s.tone),
    detail ? el("small", { class: status === "failed" ? "kb-error" : "kb-stage" }, detail) : null,
  );
}

const TYPE_NAMES = {
  "text/plain": "Text",
  "text/markdown": "Markdown",
  "text/html": "HTML",
  "application/pdf": "PDF",
  "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word",
};

function typeName(mediaType) {
  return TYPE_NAMES[mediaType] || mediaType || "";
}

