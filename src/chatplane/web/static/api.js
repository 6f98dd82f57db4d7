// The chatplane HTTP API as the web app uses it: session cookie + CSRF header, JSON problems.

import { isOutage, reportOutage, whenRecovered } from "./outage.js";

const CSRF_COOKIE = "chatplane_csrf";

/** An error answer from the API, carrying the JSON problem fields. */
export class ApiError extends Error {
  constructor(status, problem) {
    const title = problem?.title || `Request failed (${status})`;
    super(problem?.detail || title);
    this.name = "ApiError";
    this.status = status;
    this.code = problem?.code || "http_error";
    this.title = title;
    this.detail = problem?.detail || "";
    this.errors = Array.isArray(problem?.errors) ? problem.errors : [];
  }

  /** One line for a toast: the detail, else the title with the first validation error. */
  get userMessage() {
    if (this.detail) return this.detail;
    const first = this.errors[0];
    const msg = first?.message || first?.msg || "";
    const where = first?.field || (Array.isArray(first?.loc) ? first.loc.join(".") : "");
    return msg ? `${this.title} (${where ? `${where}: ` : ""}${msg})` : this.title;
  }
}

function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

/** The value the API wants in the X-CSRF-Token header of a state-changing call. */
export function csrfToken() {
  return readCookie(CSRF_COOKIE);
}

/** The CSRF cookie is set with the session cookie: without it there is no session to ask about. */
export function mayHaveSession() {
  return readCookie(CSRF_COOKIE) !== "";
}

/** Listeners told when the session is gone (401), so the app can show the login view. */
const unauthorizedListeners = new Set();
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
}

/** One call to the API; answers the parsed JSON (null for 204), throws ApiError. */
export async function request(
  method,
  path,
  { body, quiet401 = false, signal, headers: extra } = {},
) {
  const headers = { Accept: "application/json", ...extra };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = readCookie(CSRF_COOKIE);

  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    throw new ApiError(0, {
      code: "network_error",
      title: "Network error",
      detail: "Could not reach the server. Check your connection and try again.",
    });
  }

  if (response.status === 204) return null;
  const isJson = (response.headers.get("Content-Type") || "").includes("json");
  const payload = isJson ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const error = new ApiError(response.status, payload);
    if (response.status === 401 && !quiet401) unauthorizedListeners.forEach((fn) => fn(error));
    if (isOutage(error.status, error.code)) {
      reportOutage(error.code, response.headers.get("Retry-After"));
      // A read is sent again once the service is back, so the page fills in instead of
      // breaking; a write is refused as it is (the caller says so; nothing was stored).
      if (method === "GET") {
        await whenRecovered(signal);
        return request(method, path, { body, quiet401, signal, headers: extra });
      }
    }
    throw error;
  }
  return payload;
}

const enc = encodeURIComponent;

/** A fresh Idempotency-Key: 128 random bits (getRandomValues also works outside HTTPS). */
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const api = {
  login: (email, password) =>
    request("POST", "/api/auth/login", { body: { email, password }, quiet401: true }),
  acceptInvitation: (token, password) =>
    request("POST", "/api/auth/invitations/accept", { body: { token, password }, quiet401: true }),
  logout: () => request("POST", "/api/auth/logout"),
  me: () => request("GET", "/api/auth/me", { quiet401: true }),
  ssoConfig: () => request("GET", "/api/auth/sso/config"),
  ssoLoginUrl: (next) => `/api/auth/sso/login?${new URLSearchParams({ next })}`,

  models: () => request("GET", "/api/models"),

  listConversations: ({ limit = 20, cursor = null } = {}) => {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) query.set("cursor", cursor);
    return request("GET", `/api/conversations?${query}`);
  },
  createConversation: (fields) => request("POST", "/api/conversations", { body: fields }),
  getConversation: (id) => request("GET", `/api/conversations/${enc(id)}`),
  renameConversation: (id, title) =>
    request("PATCH", `/api/conversations/${enc(id)}`, { body: { title } }),
  setConversationKnowledge: (id, knowledgeBaseIds) =>
    request("PATCH", `/api/conversations/${enc(id)}`, {
      body: { knowledge_base_ids: knowledgeBaseIds },
    }),
  deleteConversation: (id) => request("DELETE", `/api/conversations/${enc(id)}`),

  // Sent again with the same `idempotencyKey`, a message is stored once.
  sendMessage: (conversationId, content, model, idempotencyKey) =>
    request("POST", `/api/conversations/${enc(conversationId)}/messages`, {
      body: model ? { content, model } : { content },
      headers: idempotencyKey ? { "Idempotency-Key": idempotencyKey } : undefined,
    }),
  getTurn: (turnId) => request("GET", `/api/turns/${enc(turnId)}`),
  cancelTurn: (turnId) => request("POST", `/api/turns/${enc(turnId)}/cancel`),
  turnEventsUrl: (turnId) => `/api/turns/${enc(turnId)}/events`,
};
