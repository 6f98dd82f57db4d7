// The knowledge API as the web app uses it: knowledge bases, documents (uploads with progress,
// indexing events), and the retrieval test.

import { ApiError, csrfToken, request } from "./api.js";

const enc = encodeURIComponent;

export const kbApi = {
  list: () => request("GET", "/api/kb"),
  create: (fields) => request("POST", "/api/kb", { body: fields }),
  get: (id) => request("GET", `/api/kb/${enc(id)}`),
  update: (id, fields) => request("PATCH", `/api/kb/${enc(id)}`, { body: fields }),
  remove: (id) => request("DELETE", `/api/kb/${enc(id)}`),

  documents: (id, { limit = 50, cursor = null } = {}) => {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) query.set("cursor", cursor);
    return request("GET", `/api/kb/${enc(id)}/documents?${query}`);
  },
  document: (id, docId) => request("GET", `/api/kb/${enc(id)}/documents/${enc(docId)}`),
  removeDocument: (id, docId) => request("DELETE", `/api/kb/${enc(id)}/documents/${enc(docId)}`),
  contentUrl: (id, docId) => `/api/kb/${enc(id)}/documents/${enc(docId)}/content`,
  eventsUrl: (id, docId) => `/api/kb/${enc(id)}/documents/${enc(docId)}/events`,

  search: (id, query, topK) =>
    request("POST", `/api/kb/${enc(id)}/search`, { body: topK ? { query, top_k: topK } : { query } }),
};

/**
 * Upload one file (multipart field `file`) with XMLHttpRequest, for its upload progress, which
 * fetch() does not report. Resolves with the accepted document, rejects with an ApiError.
 * @returns {{done: Promise<object>, abort: () => void}}
 */
export function uploadDocument(kbId, file, { onProgress } = {}) {
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    xhr.open("POST", `/api/kb/${enc(kbId)}/documents`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRF-Token", csrfToken());
    xhr.withCredentials = true;
    xhr.responseType = "text";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress?.(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      let payload = null;
      try {
        payload = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        payload = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(payload);
      else reject(new ApiError(xhr.status, payload || uploadProblem(xhr.status)));
    });
    xhr.addEventListener("error", () =>
      reject(
        new ApiError(0, {
          code: "network_error",
          title: "Network error",
          detail: "The upload did not reach the server. Check your connection and try again.",
        }),
      ),
    );
    xhr.addEventListener("abort", () => reject(new DOMException("Upload cancelled", "AbortError")));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
  return { done, abort: () => xhr.abort() };
}

/** A problem for an error answer without a JSON body (a proxy's 413 page, say). */
function uploadProblem(status) {
  if (status === 413) {
    return { code: "upload_too_large", title: "File too large", detail: "The file is larger than the server accepts." };
  }
  return { code: "http_error", title: `Upload failed (${status})` };
}

const TERMINAL = new Set(["ready", "failed"]);
const REOPEN_DELAY_MS = [1000, 2000, 4000, 8000];
const MAX_SILENT_RETRIES = 4;

/**
 * Follow one document's indexing events (SSE) until `document.ready` or `document.failed`.
 * Like a turn's stream: EventSource resumes with Last-Event-ID by itself; when the stream
 * cannot be opened, the document's own status decides whether it is over or the stream is
 * reopened after the last event seen.
 * @param {{kbId: string, docId: string, url?: string,
 *          onEvent: (type: string, data: object) => void,
 *          onEnd: (end: {status: "ready"|"failed", chunks?: number, error?: object}) => void}} opts
 * @returns {{close: () => void}}
 */
export function followDocument({ kbId, docId, url, onEvent, onEnd }) {
  const baseUrl = url || kbApi.eventsUrl(kbId, docId);
  let source = null;
  let closed = false;
  let lastEventId = "";
  let silentErrors = 0;
  let reopens = 0;
  let timer = null;
  let lastStatus = "";

  const close = () => {
    closed = true;
    clearTimeout(timer);
    source?.close();
  };
  const finish = (end) => {
    if (closed) return;
    close();
    onEnd(end);
  };

  const handlers = {
    "document.queued": (data) => {
      lastStatus = "queued";
      onEvent("queued", data);
    },
    "document.indexing": (data) => {
      lastStatus = "indexing";
      onEvent("indexing", data);
    },
    "document.ready": (data) => finish({ status: "ready", chunks: data.chunks }),
    "document.failed": (data) => finish({ status: "failed", error: data.error || null }),
  };

  function open() {
    const target = lastEventId
      ? `${baseUrl}${baseUrl.includes("?") ? "&" : "?"}after=${enc(lastEventId)}`
      : baseUrl;
    source = new EventSource(target);
    for (const [type, handle] of Object.entries(handlers)) {
      source.addEventListener(type, (event) => {
        if (closed) return;
        silentErrors = 0;
        reopens = 0;
        if (event.lastEventId) lastEventId = event.lastEventId;
        let data = {};
        try {
          data = event.data ? JSON.parse(event.data) : {};
        } catch {
          data = {};
        }
        handle(data);
      });
    }
    source.addEventListener("error", () => {
      if (closed) return;
      silentErrors += 1;
      if (source.readyState === EventSource.CLOSED || silentErrors > MAX_SILENT_RETRIES) {
        source.close();
        checkDocument();
      }
    });
  }

  async function checkDocument() {
    try {
      const doc = await kbApi.document(kbId, docId);
      if (closed) return;
      if (TERMINAL.has(doc.status)) {
        finish({
          status: doc.status,
          chunks: doc.chunks,
          error: doc.error ? { message: doc.error } : null,
        });
        return;
      }
      if (doc.status !== lastStatus) {
        lastStatus = doc.status;
        onEvent(doc.status, {});
      }
    } catch (error) {
      if (closed) return;
      if (error?.status === 404 || error?.status === 401 || error?.status === 403) {
        finish({ status: "failed", error: { code: error.code, message: error.userMessage } });
        return;
      }
    }
    const delay = REOPEN_DELAY_MS[Math.min(reopens, REOPEN_DELAY_MS.length - 1)];
    reopens += 1;
    silentErrors = 0;
    timer = setTimeout(open, delay);
  }

  open();
  return { close };
}
