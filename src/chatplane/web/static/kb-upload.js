// Uploading documents: the drop zone (several files, drag and drop or the file picker) and
// one row per file that shows its upload progress, then its indexing.

import { badge } from "./admin-ui.js";
import { STATUS, formatBytes, plural, stageText } from "./kb-format.js";
import { el, icon } from "./ui.js";

const ACCEPT = [
  ".txt",
  ".md",
  ".markdown",
  ".html",
  ".htm",
  ".pdf",
  ".docx",
  "text/plain",
  "text/markdown",
  "text/html",
  "application/pdf",
  "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
].join(",");

/** The drop zone with its file input; `onFiles(files)` gets what was picked or dropped. */
export function dropZone(onFiles) {
  const input = el("input", {
    id: "kb-file",
    class: "kb-file-input",
    type: "file",
    multiple: true,
    accept: ACCEPT,
  });
  input.addEventListener("change", () => {
    onFiles([...input.files]);
    input.value = "";
  });
  const drop = el(
    "div",
    { id: "kb-drop", class: "kb-drop" },
    el("span", { class: "kb-drop-icon" }, icon("upload")),
    el(
      "p",
      { class: "kb-drop-text" },
      el("strong", {}, "Drop files here"),
      " or ",
      el("label", { for: "kb-file", class: "kb-drop-pick" }, "choose files"),
      input,
    ),
    el("p", { class: "kb-drop-hint" }, "Text, Markdown, HTML, PDF and Word (.docx) files; several at once."),
  );
  let depth = 0; // dragenter/dragleave fire for every child
  drop.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth += 1;
    drop.classList.add("dragging");
  });
  drop.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  drop.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) drop.classList.remove("dragging");
  });
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    drop.classList.remove("dragging");
    onFiles([...(event.dataTransfer?.files || [])]);
  });
  return drop;
}

function hasFiles(event) {
  return [...(event.dataTransfer?.types || [])].includes("Files");
}

/** One file being uploaded, then indexed: name, size, a progress bar, the state in words. */
export class UploadRow {
  constructor(file) {
    this.file = file;
    this.onCancel = null;
    this.bar = el("progress", { class: "kb-progress", max: 100, value: 0, "aria-label": `Upload of ${file.name}` });
    this.text = el("span", { class: "kb-upload-state" }, "Uploading…");
    this.cancel = el(
      "button",
      {
        class: "icon-btn icon-btn-sm kb-upload-cancel",
        type: "button",
        title: "Cancel upload",
        "aria-label": `Cancel upload of ${file.name}`,
        onclick: () => this.onCancel?.(),
      },
      icon("x"),
    );
    this.dismiss = el(
      "button",
      {
        class: "icon-btn icon-btn-sm kb-upload-dismiss",
        type: "button",
        title: "Dismiss",
        "aria-label": `Dismiss ${file.name}`,
        hidden: true,
        onclick: () => {
          const list = this.node.parentElement;
          this.node.remove();
          if (list && list.children.length === 0) list.hidden = true;
        },
      },
      icon("x"),
    );
    this.node = el(
      "li",
      { class: "kb-upload", dataset: { name: file.name, status: "uploading" } },
      el("span", { class: "kb-file-icon" }, icon("file")),
      el(
        "div",
        { class: "kb-upload-main" },
        el(
          "div",
          { class: "kb-upload-line" },
          el("span", { class: "kb-upload-name" }, file.name),
          el("span", { class: "kb-upload-size" }, formatBytes(file.size)),
        ),
        this.bar,
        el("div", { class: "kb-upload-line" }, this.text),
      ),
      this.cancel,
      this.dismiss,
    );
  }

  progress(loaded, total) {
    const pct = total ? Math.min(100, Math.round((loaded / total) * 100)) : 0;
    this.bar.value = pct;
    this.text.textContent = pct >= 100 ? "Uploaded, waiting for the server…" : `Uploading… ${pct}%`;
  }

  setStatus(status, data = {}) {
    this.node.dataset.status = status;
    this.cancel.hidden = true;
    if (status === "indexing") {
      const stage = stageText(data);
      this.text.textContent = stage ? `Indexing: ${stage}` : "Indexing…";
      if (Number.isFinite(data?.done) && Number.isFinite(data?.total) && data.total > 0) {
        this.bar.value = Math.round((data.done / data.total) * 100);
      } else {
        this.bar.removeAttribute("value"); // indeterminate
      }
    } else if (status === "queued") {
      this.text.textContent = "Queued for indexing…";
      this.bar.removeAttribute("value");
    }
  }

  ready(chunks) {
    this.node.dataset.status = "ready";
    this.bar.value = 100;
    this.bar.hidden = true;
    this.text.replaceChildren(badge("Ready", "success"), ` ${plural(Number(chunks) || 0, "passage")} indexed`);
    this.finished();
  }

  duplicate(status) {
    this.node.dataset.status = "duplicate";
    this.bar.hidden = true;
    this.text.replaceChildren(badge("Already here", "neutral"), ` The same file is in this knowledge base (${STATUS[status]?.label.toLowerCase() || status}).`);
    this.finished();
  }

  /** `status`: "error" (the upload was refused) or "failed" (indexing failed). */
  error(message, status = "error") {
    this.node.dataset.status = status;
    this.bar.hidden = true;
    this.text.replaceChildren(el("span", { class: "kb-upload-error", role: "alert" }, message));
    this.finished();
  }

  finished() {
    this.cancel.hidden = true;
    this.dismiss.hidden = false;
  }
}
