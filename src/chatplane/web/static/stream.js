// Follow one turn's events and rebuild the assistant's text from its deltas.
//
// The events come over the tab's WebSocket channel (channel.js), or as server-sent events
// where WebSockets do not get through; both carry the same ids. Opened without a position,
// the stream replays the turn from its first event, so a page that reloads mid-answer
// rebuilds the partial text and then follows the live tail. After a network error the
// channel resubscribes (EventSource reconnects by itself with Last-Event-ID) after the last
// event seen, so nothing is lost or repeated. If the stream cannot be followed at all
// (expired, HTTP error), we ask the turn's status and either report its end or open the
// stream again after the last event we saw.

import { api } from "./api.js";
import { channel } from "./channel.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const MAX_SILENT_RETRIES = 4; // consecutive errors with no event in between
const REOPEN_DELAY_MS = [1000, 2000, 4000, 8000];

/**
 * @param {string} turnId
 * @param {{url?: string, onText: (text: string) => void, onStatus?: (status: string) => void,
 *          onCitations?: (citations: object[]) => void,
 *          onEnd: (end: {status: string, error: object|null, messageId: string|null,
 *          text: string, replayed: boolean}) => void, onReconnecting?: (on: boolean) => void}} handlers
 * @returns {{close: () => void, resync: () => Promise<void>, get text(): string}}
 */
export function followTurn(turnId, { url, onText, onStatus, onCitations, onEnd, onReconnecting }) {
  const baseUrl = url || api.turnEventsUrl(turnId);
  let text = "";
  let lastEventId = "";
  let source = null;
  let unsubscribe = null;
  let closed = false;
  let silentErrors = 0;
  let reopenTimer = null;
  let reopens = 0;

  const finish = (end) => {
    if (closed) return;
    close();
    onEnd({ text, replayed: false, error: null, messageId: null, ...end });
  };

  const handlers = {
    "turn.queued": () => onStatus?.("queued"),
    "turn.started": () => onStatus?.("running"),
    "message.delta": (data) => {
      text += typeof data.text === "string" ? data.text : "";
      onText(text);
    },
    "turn.restarted": () => {
      // The worker died and another one runs the turn again: the partial text is void.
      text = "";
      onText(text);
      onCitations?.([]);
      onStatus?.("queued");
    },
    "turn.citations": (data) => onCitations?.(Array.isArray(data.citations) ? data.citations : []),
    "turn.completed": (data) => finish({ status: "completed", messageId: data.message_id ?? null }),
    "turn.failed": (data) => finish({ status: "failed", error: data.error ?? null }),
    "turn.cancelled": () => finish({ status: "cancelled" }),
  };

  /** One event from either transport: keep its id, then apply it. */
  function deliver(type, id, data) {
    if (closed) return;
    silentErrors = 0;
    reopens = 0;
    onReconnecting?.(false);
    if (id) lastEventId = id;
    handlers[type]?.(data);
  }

  function open() {
    if (channel.usable) {
      unsubscribe = channel.subscribe(turnId, {
        after: () => lastEventId,
        onEvent: (message) => deliver(message.event, message.id, message.data),
        onError: () => {
          unsubscribe = null;
          checkTurn();
        },
        onConnection: (down) => onReconnecting?.(down),
        onFallback: () => {
          unsubscribe = null;
          if (!closed) openEventSource();
        },
      });
    } else {
      openEventSource();
    }
  }

  function openEventSource() {
    const target = lastEventId
      ? `${baseUrl}${baseUrl.includes("?") ? "&" : "?"}after=${encodeURIComponent(lastEventId)}`
      : baseUrl;
    source = new EventSource(target);
    for (const type of Object.keys(handlers)) {
      source.addEventListener(type, (event) => {
        let data = {};
        try {
          data = event.data ? JSON.parse(event.data) : {};
        } catch {
          data = {};
        }
        deliver(type, event.lastEventId, data);
      });
    }
    source.addEventListener("open", () => onReconnecting?.(false));
    source.addEventListener("error", () => {
      if (closed) return;
      silentErrors += 1;
      if (source.readyState === EventSource.CLOSED || silentErrors > MAX_SILENT_RETRIES) {
        source.close();
        checkTurn();
      } else {
        onReconnecting?.(true);
      }
    });
  }

  async function checkTurn({ reopen = true } = {}) {
    try {
      const turn = await api.getTurn(turnId);
      if (closed) return;
      if (TERMINAL.has(turn.status)) {
        // The stream is gone but the turn is over: the stored conversation has the answer.
        finish({
          status: turn.status,
          error: turn.error ?? null,
          messageId: turn.assistant_message_id ?? null,
          replayed: true,
        });
        return;
      }
    } catch (error) {
      if (closed) return;
      if (error?.status === 404 || error?.status === 401 || error?.status === 403) {
        finish({ status: "failed", error: { code: error.code, message: error.userMessage } });
        return;
      }
    }
    if (!reopen || closed) return;
    onReconnecting?.(true);
    silentErrors = 0;
    const delay = REOPEN_DELAY_MS[Math.min(reopens, REOPEN_DELAY_MS.length - 1)];
    reopens += 1;
    reopenTimer = setTimeout(open, delay);
  }

  function close() {
    closed = true;
    clearTimeout(reopenTimer);
    unsubscribe?.();
    unsubscribe = null;
    source?.close();
  }

  open();
  return {
    close,
    /** Ask the turn's status and end here if it is over (a terminal event went missing). */
    resync: () => checkTurn({ reopen: false }),
    get text() {
      return text;
    },
  };
}
