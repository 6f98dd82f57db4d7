// The admin API and the own-account API, as the admin pages use them.

import { request } from "./api.js";

const enc = encodeURIComponent;

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export const adminApi = {
  // Users of the organisation.
  users: ({ email, limit, offset } = {}) =>
    request("GET", `/api/admin/users${query({ email, limit, offset })}`),
  createUser: (fields) => request("POST", "/api/admin/users", { body: fields }),
  updateUser: (id, fields) => request("PATCH", `/api/admin/users/${enc(id)}`, { body: fields }),
  userSessions: (id) => request("GET", `/api/admin/users/${enc(id)}/sessions`),
  endUserSession: (id, sessionId) =>
    request("DELETE", `/api/admin/users/${enc(id)}/sessions/${enc(sessionId)}`),
  logoutUserEverywhere: (id) => request("POST", `/api/admin/users/${enc(id)}/logout-all`),

  // Invitations.
  invitations: () => request("GET", "/api/admin/invitations"),
  invite: (fields) => request("POST", "/api/admin/invitations", { body: fields }),
  revokeInvitation: (id) => request("DELETE", `/api/admin/invitations/${enc(id)}`),

  // API keys of the organisation.
  tenantKeys: () => request("GET", "/api/admin/keys"),
  revokeTenantKey: (id) => request("DELETE", `/api/admin/keys/${enc(id)}`),

  // Audit log.
  audit: ({ limit, before } = {}) => request("GET", `/api/admin/audit${query({ limit, before })}`),

  // Tenants and models (superadmins).
  tenants: () => request("GET", "/api/admin/tenants"),
  createTenant: (fields) => request("POST", "/api/admin/tenants", { body: fields }),
  updateTenant: (id, fields) =>
    request("PATCH", `/api/admin/tenants/${enc(id)}`, { body: fields }),
  models: () => request("GET", "/api/admin/models"),
  createModel: (fields) => request("POST", "/api/admin/models", { body: fields }),
  updateModel: (id, fields) => request("PATCH", `/api/admin/models/${enc(id)}`, { body: fields }),
  deleteModel: (id) => request("DELETE", `/api/admin/models/${enc(id)}`),
};

export const accountApi = {
  keys: () => request("GET", "/api/keys"),
  createKey: (fields) => request("POST", "/api/keys", { body: fields }),
  revokeKey: (id) => request("DELETE", `/api/keys/${enc(id)}`),
  sessions: () => request("GET", "/api/auth/sessions"),
  endSession: (id) => request("DELETE", `/api/auth/sessions/${enc(id)}`),
  // A wrong current password answers 401: not a sign that the session is gone.
  changePassword: (currentPassword, newPassword) =>
    request("POST", "/api/auth/password", {
      body: { current_password: currentPassword, new_password: newPassword },
      quiet401: true,
    }),
  logoutEverywhere: () => request("POST", "/api/auth/logout-all"),
};

/** id -> email of the organisation's users (the first 200), to name actors and inviters. */
export async function userEmails() {
  try {
    const page = await adminApi.users({ limit: 200 });
    return new Map(page.items.map((user) => [user.id, user.email]));
  } catch {
    return new Map(); // only cosmetic: ids are shown instead
  }
}
