// Invitations: invite by link (shown once), the pending ones, revoke.

import { adminApi, userEmails } from "./admin-api.js";
import {
  ROLE_OPTIONS,
  ROLE_TONES,
  badge,
  button,
  capitalize,
  card,
  dataTable,
  emptyState,
  formDialog,
  formValue,
  identity,
  loading,
  muted,
  pageHeader,
  primaryButton,
  secretResult,
  selectField,
  textField,
  when,
} from "./admin-ui.js";
import { confirmDialog, el, toast, toastError } from "./ui.js";

const EXPIRY_OPTIONS = [
  ["1", "1 day"],
  ["3", "3 days"],
  ["7", "7 days"],
  ["14", "14 days"],
  ["30", "30 days"],
];

export const invitationsPage = {
  title: "Invitations",
  access: "admin",
  render(root) {
    const body = el("div", { class: "adm-card-body" }, loading());
    const load = async () => {
      try {
        const [invitations, emails] = await Promise.all([adminApi.invitations(), userEmails()]);
        body.replaceChildren(table(invitations, emails, load));
      } catch (error) {
        toastError(error);
        body.replaceChildren(emptyState("mail", "Could not load the invitations", error?.userMessage));
      }
    };
    root.append(
      pageHeader({
        title: "Invitations",
        description: "Invite people with a link: they choose a password and join your organisation. A link works once.",
        actions: [primaryButton("Invite someone", () => invite(load), { id: "create-invitation" })],
      }),
      card(el("div", { class: "adm-card-head" }, el("h3", {}, "Pending invitations")), body),
    );
    load();
  },
};

function table(invitations, emails, reload) {
  if (invitations.length === 0) {
    return emptyState("mail", "No pending invitations", "Invitations that were accepted or expired leave this list.");
  }
  return dataTable({
    label: "Pending invitations",
    rowClass: "invitation-row",
    columns: [
      { label: "Email", class: "col-main" },
      { label: "Role" },
      { label: "Invited by" },
      { label: "Sent" },
      { label: "Expires" },
      { label: "Actions", class: "col-actions" },
    ],
    rows: invitations.map((invitation) => ({
      dataset: { id: invitation.id, email: invitation.email },
      cells: [
        identity(invitation.email),
        badge(capitalize(invitation.role), ROLE_TONES[invitation.role]),
        inviter(invitation.created_by, emails),
        when(invitation.created_at),
        when(invitation.expires_at),
        el(
          "div",
          { class: "adm-row-actions" },
          button("Revoke", {
            kind: "danger-soft",
            className: "revoke-invitation",
            onclick: () => revoke(invitation, reload),
          }),
        ),
      ],
    })),
  });
}

function inviter(userId, emails) {
  if (!userId) return muted("—");
  return emails.get(userId) || el("span", { class: "adm-mono-soft", title: userId }, `${userId.slice(0, 8)}…`);
}

async function invite(reload) {
  await formDialog({
    title: "Invite someone",
    description: "You get a link to send them. Whoever opens it chooses a password and signs in as this user.",
    submitLabel: "Create invitation",
    body: [
      textField({ label: "Email", name: "email", type: "email", required: true, autocomplete: "off", maxlength: 320 }),
      el(
        "div",
        { class: "adm-field-row" },
        selectField({ label: "Role", name: "role", options: ROLE_OPTIONS, value: "member" }),
        selectField({ label: "Link expires after", name: "expires_in_days", options: EXPIRY_OPTIONS, value: "7" }),
      ),
    ],
    onSubmit: async (form) => {
      const days = Number(formValue(form, "expires_in_days"));
      const invitation = await adminApi.invite({
        email: formValue(form, "email"),
        role: formValue(form, "role"),
        expires_in_days: days,
      });
      reload();
      return secretResult({
        title: "Invitation created",
        text: `Send this link to ${invitation.email}. It works once, until ${new Date(invitation.expires_at).toLocaleString([], { dateStyle: "medium", timeStyle: "short" })}.`,
        value: new URL(invitation.accept_url, location.origin).href,
        copyLabel: "Invitation link",
      });
    },
  });
}

async function revoke(invitation, reload) {
  const ok = await confirmDialog({
    title: "Revoke this invitation?",
    text: `The link sent to ${invitation.email} stops working.`,
    confirmLabel: "Revoke",
  });
  if (!ok) return;
  try {
    await adminApi.revokeInvitation(invitation.id);
    toast(`The invitation of ${invitation.email} is revoked.`, { kind: "info" });
  } catch (error) {
    toastError(error);
  }
  reload();
}
