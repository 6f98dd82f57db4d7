// chatplane web app: login, conversation list, chat thread with streamed answers.

import { ApiError, api, mayHaveSession, newIdempotencyKey, onUnauthorized } from "./api.js";
import { KnowledgePicker } from "./kb-picker.js";
import { KnowledgePages } from "./knowledge.js";
import { ModelPicker } from "./models.js";
import { Sidebar, titleOf } from "./sidebar.js";
import { followTurn } from "./stream.js";
import { Thread } from "./thread.js";
import { $, confirmDialog, toast, toastError } from "./ui.js";

const PAGE_SIZE = 20;

// What a failed single sign-on (`/?sso_error=<code>`) tells the user on the login view.
const SSO_ERRORS = {
  sso_not_provisioned:
    "There is no account for this email address. Ask your administrator for an invitation.",
  account_disabled: "This account is disabled.",
  sso_email_unverified: "Your identity provider has not confirmed your email address.",
  sso_denied: "Sign-in was cancelled.",
  sso_state_invalid: "The sign-in expired or was started in another window. Try again.",
  sso_not_configured: "Single sign-on is not set up on this server.",
};
const SSO_ERROR_OTHER = "Single sign-on failed. Try again, or ask your administrator.";

// The login view's texts: signing in, or accepting an invitation (`/?invite=<token>`).
const LOGIN_TEXTS = {
  title: "Sign in",
  sub: "Use the account your administrator gave you.",
  submit: "Sign in",
};
const INVITE_TEXTS = {
  title: "Accept invitation",
  sub: "Choose a password for your new account: at least 8 characters.",
  submit: "Accept and sign in",
};
const MIN_PASSWORD = 8;

const state = {
  user: null,
  conversationId: null, // the open conversation
  conversation: null,
  live: null, // {turnId, conversationId, stream, message, cancelling}
  sending: false, // a message is on its way (before the turn stream opens)
  openSeq: 0, // guards against out-of-order conversation loads
  invite: null, // the token of an invitation being accepted
  section: "chat", // "chat" or "kb" (the knowledge pages)
};

const thread = new Thread();
const models = new ModelPicker();
const kbPicker = new KnowledgePicker({ onChange: saveKnowledgeSelection });
const knowledge = new KnowledgePages({ onChange: () => kbPicker.load() });
const sidebar = new Sidebar({
  onRename: renameConversation,
  onDelete: deleteConversation,
  onLoadMore: loadMoreConversations,
  onNavigate: closeDrawer,
});

// ---------------------------------------------------------------- views

function showView(name) {
  $("boot").hidden = true;
  $("login-view").hidden = name !== "login";
  $("chat-view").hidden = name !== "chat";
  document.body.dataset.view = name;
}

function showLogin(message = "") {
  stopFollowing();
  state.user = null;
  state.conversationId = null;
  state.conversation = null;
  sidebar.reset();
  thread.clear();
  showView("login");
  setLoginMode();
  if (!state.invite) offerSso();
  setLoginError(message);
  $("login-password").value = "";
  (state.invite ? $("login-password") : $("login-email")).focus();
}

/** The login form signs in, or (with an invitation) only asks for the new password. */
function setLoginMode() {
  const invite = Boolean(state.invite);
  const texts = invite ? INVITE_TEXTS : LOGIN_TEXTS;
  document.querySelector(".login-title").textContent = texts.title;
  document.querySelector(".login-sub").textContent = texts.sub;
  $("login-submit").textContent = texts.submit;
  $("login-email").closest(".field").hidden = invite;
  $("login-password").autocomplete = invite ? "new-password" : "current-password";
  if (invite) $("sso").hidden = true;
}

function setLoginError(message) {
  const box = $("login-error");
  box.textContent = message;
  box.hidden = !message;
}

async function showChat(user) {
  state.user = user;
  $("user-email").textContent = user.email;
  $("user-avatar").textContent = (user.email || "?").slice(0, 1).toUpperCase();
  $("admin-link").hidden = !(user.role === "owner" || user.role === "admin" || user.is_superadmin);
  showView("chat");
  kbPicker.load(); // not awaited: the chat does not wait for the knowledge bases
  await Promise.all([models.load(), loadConversations()]);
  await openFromLocation();
}

// ---------------------------------------------------------------- auth

let ssoConfig = null; // the request for it, made once

/** Show "Sign in with <provider>" when the server offers single sign-on. */
function offerSso() {
  ssoConfig ??= api.ssoConfig().catch(() => null);
  ssoConfig.then((config) => {
    if (!config?.enabled) return;
    $("sso-name").textContent = config.name;
    $("sso").hidden = false;
  });
}

/** Take a failed sign-on's code out of the address and return its message. */
function takeSsoError() {
  const params = new URLSearchParams(location.search);
  const code = params.get("sso_error");
  if (code === null) return "";
  params.delete("sso_error");
  const query = params.toString();
  history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
  return SSO_ERRORS[code] || SSO_ERROR_OTHER;
}

/** An invitation's token from the address (`/?invite=<token>`); it stays there until the
 * invitation is accepted, so a reload keeps the form. */
function inviteFromLocation() {
  return new URLSearchParams(location.search).get("invite") || null;
}

function dropInviteFromLocation() {
  const params = new URLSearchParams(location.search);
  params.delete("invite");
  const query = params.toString();
  history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
}

async function onAcceptInvitation() {
  const password = $("login-password").value;
  if (password.length < MIN_PASSWORD) {
    setLoginError(`Choose a password of at least ${MIN_PASSWORD} characters.`);
    return;
  }
  const button = $("login-submit");
  button.disabled = true;
  button.textContent = "Setting up…";
  setLoginError("");
  try {
    await api.acceptInvitation(state.invite, password);
    state.invite = null;
    dropInviteFromLocation();
    setLoginMode();
    await showChat(await api.me());
  } catch (error) {
    setLoginError(error?.userMessage || "Could not accept the invitation. Try again.");
    $("login-password").select();
  } finally {
    button.disabled = false;
    setLoginMode();
  }
}

async function onLoginSubmit(event) {
  event.preventDefault();
  if (state.invite) {
    await onAcceptInvitation();
    return;
  }
  const email = $("login-email").value.trim();
  const password = $("login-password").value;
  if (!email || !password) {
    setLoginError("Enter your email and password.");
    return;
  }
  const button = $("login-submit");
  button.disabled = true;
  button.textContent = "Signing in…";
  setLoginError("");
  try {
    await api.login(email, password);
    await showChat(await api.me());
  } catch (error) {
    if (error instanceof ApiError && error.code === "invalid_credentials") {
      setLoginError("Incorrect email or password.");
    } else if (error instanceof ApiError && error.status === 401) {
      setLoginError(error.userMessage || "Incorrect email or password.");
    } else {
      setLoginError(error?.userMessage || "Could not sign in. Try again.");
    }
    $("login-password").select();
  } finally {
    button.disabled = false;
    button.textContent = "Sign in";
  }
}

async function logout() {
  try {
    await api.logout();
  } catch (error) {
    if (error?.status !== 401) {
      toastError(error); // still signed in on the server: stay here
      return;
    }
  }
  history.replaceState(null, "", location.pathname);
  showLogin();
}

// ---------------------------------------------------------------- conversations

async function loadConversations() {
  sidebar.loadStarted();
  try {
    const page = await api.listConversations({ limit: PAGE_SIZE });
    sidebar.setPage(page.items || [], page.next_cursor);
  } catch (error) {
    sidebar.loadFailed();
    toastError(error);
  }
}

async function loadMoreConversations() {
  if (!sidebar.nextCursor) return;
  const button = $("load-more");
  button.disabled = true;
  try {
    const page = await api.listConversations({ limit: PAGE_SIZE, cursor: sidebar.nextCursor });
    sidebar.setPage(page.items || [], page.next_cursor, { append: true });
    sidebar.setActive(state.conversationId);
  } catch (error) {
    toastError(error);
  } finally {
    button.disabled = false;
  }
}

function conversationIdFromLocation() {
  const match = location.hash.match(/^#\/c\/([^/?#]+)/);
  return match ? decodeURIComponent(match[1]) : null;
}

/** `#/kb` (the list) or `#/kb/<id>` (one knowledge base); null for the chat's routes. */
function knowledgeRouteFromLocation() {
  const match = location.hash.match(/^#\/kb(?:\/([^/?#]+))?\/?$/);
  return match ? { kbId: match[1] ? decodeURIComponent(match[1]) : null } : null;
}

/** The main area shows the chat or the knowledge pages; the sidebar stays. */
function showSection(name) {
  const was = state.section;
  state.section = name;
  $("chat-main").hidden = name !== "chat";
  $("kb-view").hidden = name !== "kb";
  const link = $("kb-link");
  link.classList.toggle("active", name === "kb");
  if (name === "kb") link.setAttribute("aria-current", "page");
  else link.removeAttribute("aria-current");
  if (name === "kb") {
    kbPicker.close();
    sidebar.setActive(null);
  } else if (was === "kb") {
    knowledge.leave();
    document.title = "chatplane";
    sidebar.setActive(state.conversationId);
  }
}

async function openFromLocation() {
  const route = knowledgeRouteFromLocation();
  if (route) {
    showSection("kb");
    closeDrawer();
    knowledge.show(route.kbId);
    return;
  }
  const id = conversationIdFromLocation();
  if (id) await openConversation(id);
  else showEmptyChat();
}

function showEmptyChat() {
  showSection("chat");
  stopFollowing();
  state.conversationId = null;
  state.conversation = null;
  sidebar.setActive(null);
  thread.clear();
  $("conv-title").textContent = "New chat";
  models.showPreferred();
  kbPicker.set([]);
  setComposerBusy(false);
  focusComposer();
}

async function openConversation(id) {
  showSection("chat");
  if (id === state.conversationId && state.conversation) return;
  stopFollowing();
  const seq = ++state.openSeq;
  state.conversationId = id;
  state.conversation = null;
  sidebar.setActive(id);
  thread.clear();
  $("conv-title").textContent = titleOf(sidebar.get(id));
  models.show(sidebar.get(id)?.model);
  kbPicker.set(sidebar.get(id)?.knowledge_base_ids || []);
  const pickedBefore = models.userChanges;
  const kbPickedBefore = kbPicker.changes;
  setComposerBusy(false);

  let conversation;
  try {
    conversation = await api.getConversation(id);
  } catch (error) {
    if (seq !== state.openSeq) return;
    toastError(error);
    if (error?.status === 404) {
      sidebar.remove(id);
      history.replaceState(null, "", location.pathname);
      showEmptyChat();
    }
    return;
  }
  if (seq !== state.openSeq) return; // the user moved on meanwhile

  state.conversation = conversation;
  $("conv-title").textContent = titleOf(conversation);
  if (models.userChanges === pickedBefore) models.show(conversation.model);
  if (kbPicker.changes === kbPickedBefore) kbPicker.set(conversation.knowledge_base_ids || []);
  thread.showMessages(conversation.messages || [], id);
  if (conversation.active_turn_id) {
    // An answer is still being written (e.g. the page was reloaded mid-answer): replay its
    // stream from the first event and follow the live tail.
    follow(conversation.active_turn_id, id);
  }
  focusComposer();
}

async function newConversation() {
  closeDrawer();
  const button = $("new-chat");
  button.disabled = true;
  try {
    const fields = {};
    if (models.value) fields.model = models.value;
    const knowledgeBaseIds = kbPicker.value;
    if (knowledgeBaseIds.length) fields.knowledge_base_ids = knowledgeBaseIds;
    const conversation = await api.createConversation(fields);
    sidebar.upsert(conversation, { toTop: true });
    await navigateTo(conversation.id);
    return conversation;
  } catch (error) {
    toastError(error);
    return null;
  } finally {
    button.disabled = false;
  }
}

/** Open a conversation and put it in the address (pushState: no hashchange to react to). */
function navigateTo(id) {
  const hash = `#/c/${encodeURIComponent(id)}`;
  if (location.hash !== hash) history.pushState(null, "", hash);
  return openConversation(id);
}

/** The picker changed: save it on the open chat (the empty screen keeps it for the new one). */
async function saveKnowledgeSelection(ids) {
  const id = state.conversationId;
  if (!id) return true;
  try {
    const updated = await api.setConversationKnowledge(id, ids);
    const { messages: _messages, ...meta } = updated || {};
    sidebar.upsert({ id, knowledge_base_ids: ids, ...meta });
    sidebar.setActive(state.conversationId);
    if (id === state.conversationId && state.conversation) {
      state.conversation = { ...state.conversation, ...meta, knowledge_base_ids: ids };
    }
    return true;
  } catch (error) {
    toastError(error);
    return false;
  }
}

async function renameConversation(id, title, previousTitle) {
  try {
    const updated = await api.renameConversation(id, title);
    sidebar.upsert(updated);
    if (id === state.conversationId) $("conv-title").textContent = titleOf(updated);
  } catch (error) {
    sidebar.upsert({ id, title: previousTitle });
    toastError(error);
  }
}

async function deleteConversation(conversation) {
  const ok = await confirmDialog({
    title: "Delete chat?",
    text: `“${titleOf(conversation)}” and all its messages will be deleted. This cannot be undone.`,
  });
  if (!ok) return;
  try {
    await api.deleteConversation(conversation.id);
  } catch (error) {
    if (error?.status !== 404) {
      toastError(error);
      return;
    }
  }
  sidebar.remove(conversation.id);
  if (conversation.id === state.conversationId) {
    history.replaceState(null, "", location.pathname);
    showEmptyChat();
  }
  toast("Chat deleted", { kind: "info" });
}

/** Ask for the conversation again to pick up a title the server set from the first message. */
async function refreshConversationMeta(id) {
  try {
    const fresh = await api.getConversation(id);
    const { messages: _messages, ...meta } = fresh;
    sidebar.upsert(meta);
    if (id === state.conversationId) {
      state.conversation = { ...state.conversation, ...meta };
      $("conv-title").textContent = titleOf(fresh);
    }
  } catch {
    // Only cosmetic; the list catches up on the next load.
  }
}

// ---------------------------------------------------------------- sending and streaming

// The last send whose answer never came (network error, 5xx): it may be stored. Sending the
// same message again reuses its Idempotency-Key, so the server answers with the stored turn
// instead of storing the message twice; any other message gets a fresh key.
let unconfirmedSend = null;

function idempotencyKeyFor(conversationId, content, model) {
  const last = unconfirmedSend;
  const same =
    last?.conversationId === conversationId && last.content === content && last.model === model;
  if (same) return last.key;
  unconfirmedSend = { conversationId, content, model, key: newIdempotencyKey() };
  return unconfirmedSend.key;
}

/** Whether a failed send may still have been stored (no answer, or the server's fault). */
function mayHaveBeenStored(error) {
  return error?.status === 0 || error?.status >= 500;
}

async function sendMessage() {
  const input = $("composer-input");
  const content = input.value.trim();
  if (!content || state.live || state.sending) return;
  state.sending = true;
  input.value = "";
  autosize();
  setComposerBusy(true);
  try {
    await deliver(content);
  } finally {
    state.sending = false;
    if (!state.live) setComposerBusy(false);
  }
}

async function deliver(content) {
  const input = $("composer-input");
  const restoreDraft = () => {
    if (!input.value) input.value = content;
    autosize();
  };

  let conversationId = state.conversationId;
  if (!conversationId) {
    const created = await newConversation();
    if (!created) {
      restoreDraft();
      return;
    }
    conversationId = created.id;
    setComposerBusy(true); // opening the new chat reset it
  }

  const userNode = thread.addUser(content);
  const model = models.value;
  let accepted;
  try {
    accepted = await api.sendMessage(
      conversationId,
      content,
      model,
      idempotencyKeyFor(conversationId, content, model),
    );
    unconfirmedSend = null;
  } catch (error) {
    if (!mayHaveBeenStored(error)) unconfirmedSend = null;
    userNode.remove();
    thread.updateWelcome();
    restoreDraft();
    toastError(error);
    if (error?.status === 404 && conversationId === state.conversationId) {
      // Deleted elsewhere (another tab or device): drop it; the draft starts a new chat.
      sidebar.remove(conversationId);
      history.replaceState(null, "", location.pathname);
      showEmptyChat();
    }
    return;
  }
  userNode.querySelector(".bubble").classList.remove("pending");
  if (accepted.message_id) userNode.dataset.messageId = accepted.message_id;
  models.remember();

  sidebar.upsert({ id: conversationId, updated_at: new Date().toISOString() }, { toTop: true });
  sidebar.setActive(state.conversationId);
  if (conversationId === state.conversationId) {
    follow(accepted.turn_id, conversationId, accepted.events_url);
  }
  refreshConversationMeta(conversationId);
}

function follow(turnId, conversationId, eventsUrl) {
  stopFollowing();
  const message = thread.addAssistant({ turnId });
  const live = { turnId, conversationId, message, cancelling: false, stream: null };
  state.live = live;
  setComposerBusy(true);

  live.stream = followTurn(turnId, {
    url: eventsUrl,
    onText: (text) => message.setText(text),
    onCitations: (citations) => message.setCitations(citations),
    onStatus: (status) => message.setStatus(status === "running" ? "streaming" : status),
    onReconnecting: (on) =>
      message.setStatus(message.node.dataset.status, { reconnecting: on }),
    onEnd: (end) => onTurnEnd(live, end),
  });
}

async function onTurnEnd(live, end) {
  if (state.live === live) state.live = null;
  let text = end.text;
  let citations = null;
  // The live event names no file: the stored message's citations do.
  const unnamed = live.message.cites.citations.some((c) => !c.filename);
  if (end.status === "completed" && (end.replayed || unnamed)) {
    // The live stream was gone, or the sources need their names: ask the stored answer.
    try {
      const conversation = await api.getConversation(live.conversationId);
      const stored = (conversation.messages || []).find((m) => m.id === end.messageId) ||
        (conversation.messages || []).filter((m) => m.role === "assistant").at(-1);
      if (stored && end.replayed) text = stored.content;
      if (stored && Array.isArray(stored.citations)) citations = stored.citations;
    } catch (error) {
      toastError(error);
    }
  }
  live.message.finish({ ...end, text }); // a failure shows in place, under the answer
  if (citations) live.message.setCitations(citations);
  if (live.conversationId === state.conversationId) {
    setComposerBusy(false);
    focusComposer();
    refreshConversationMeta(live.conversationId);
  }
}

/** Stop listening (switching chats, logging out); the turn itself keeps running. */
function stopFollowing() {
  if (!state.live) return;
  state.live.stream?.close();
  state.live = null;
  setComposerBusy(false);
}

async function stopAnswer() {
  const live = state.live;
  if (!live || live.cancelling) return;
  live.cancelling = true;
  $("stop").disabled = true;
  try {
    await api.cancelTurn(live.turnId);
    // The stream ends with turn.cancelled and onTurnEnd re-enables the composer; should that
    // event not arrive, ask the turn itself after a while.
    setTimeout(() => {
      if (state.live === live) live.stream.resync();
    }, 5000);
  } catch (error) {
    live.cancelling = false;
    $("stop").disabled = false;
    if (error?.status !== 409) toastError(error);
  }
}

// ---------------------------------------------------------------- composer

function setComposerBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("stop").disabled = false;
  $("composer").classList.toggle("busy", busy);
  updateSendButton();
}

function updateSendButton() {
  $("send").disabled = $("composer-input").value.trim().length === 0;
}

function autosize() {
  const input = $("composer-input");
  input.style.height = "auto"; // CSSOM, allowed by the CSP (unlike style="" attributes)
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
  updateSendButton();
}

function focusComposer() {
  // On phones focusing opens the keyboard; only do it where there is a fine pointer.
  if (matchMedia("(pointer: fine)").matches) $("composer-input").focus();
}

function onComposerKeydown(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!state.live) sendMessage();
  }
}

// ---------------------------------------------------------------- mobile drawer

function openDrawer() {
  document.body.classList.add("drawer-open");
  $("scrim").hidden = false;
}

function closeDrawer() {
  document.body.classList.remove("drawer-open");
  $("scrim").hidden = true;
}

// ---------------------------------------------------------------- boot

function wire() {
  $("login-form").addEventListener("submit", onLoginSubmit);
  $("sso-login").addEventListener("click", () => {
    // Come back to the conversation that was open.
    $("sso-login").href = api.ssoLoginUrl(location.pathname + location.hash);
  });
  $("logout").addEventListener("click", logout);
  $("new-chat").addEventListener("click", newConversation);
  $("new-chat-top").addEventListener("click", newConversation);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  $("composer-input").addEventListener("keydown", onComposerKeydown);
  $("composer-input").addEventListener("input", autosize);
  $("stop").addEventListener("click", stopAnswer);
  $("sidebar-open").addEventListener("click", openDrawer);
  $("kb-sidebar-open").addEventListener("click", openDrawer);
  $("kb-link").addEventListener("click", closeDrawer);
  $("sidebar-close").addEventListener("click", closeDrawer);
  $("scrim").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && document.body.classList.contains("drawer-open")) closeDrawer();
  });
  window.addEventListener("hashchange", () => {
    if (state.user) openFromLocation();
  });
  onUnauthorized(() => {
    if (state.user) showLogin("Your session has ended. Please sign in again.");
  });
}

async function boot() {
  wire();
  state.invite = inviteFromLocation();
  if (state.invite) {
    showLogin(); // whoever is signed in here, the invitation makes a new account
    return;
  }
  const ssoError = takeSsoError();
  if (!mayHaveSession()) {
    showLogin(ssoError); // no cookie, no session: skip a request that can only answer 401
    return;
  }
  try {
    const user = await api.me();
    await showChat(user);
    if (ssoError) toast(ssoError);
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) toastError(error);
    showLogin(ssoError);
  }
}

boot();
