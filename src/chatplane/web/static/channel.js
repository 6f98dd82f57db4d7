// One WebSocket per tab (/api/ws) carries the events of every turn this page follows.
//
// Each follower subscribes with the id of the last event it saw; when the socket drops (a
// network blip, a server that restarts and closes with 1012) the channel reconnects, to any
// API process, and subscribes every follower again after its own last event, so nothing is
// lost or repeated. The session cookie authenticates the socket. Where WebSockets never get
// through (a proxy that does not route them), followers fall back to server-sent events.

const RECONNECT_DELAY_MS = [250, 1000, 2000, 4000, 8000];
const FAILED_OPENS_BEFORE_FALLBACK = 2; // only while the socket has never opened

/**
 * @typedef {object} Subscriber
 * @property {() => string} after the id of the last event seen ("" for none)
 * @property {(message: {id: string|null, event: string, data: object}) => void} onEvent
 * @property {(message: {code: string, message: string}) => void} onError the subscription
 *   ended with an error (the turn is unknown, the broker is down): the follower decides
 * @property {(down: boolean) => void} onConnection the socket dropped (true) or is back
 * @property {() => void} onFallback WebSockets do not work here: use another transport
 */

class Channel {
  constructor() {
    /** @type {Map<string, Subscriber>} */
    this.subscribers = new Map();
    this.socket = null;
    this.everOpened = false;
    this.failedOpens = 0;
    this.reconnects = 0;
    this.timer = null;
    this.unusable = typeof WebSocket === "undefined";
  }

  get usable() {
    return !this.unusable;
  }

  /**
   * Follow a turn's events; returns the function that stops following it.
   * @param {string} turnId
   * @param {Subscriber} subscriber
   */
  subscribe(turnId, subscriber) {
    this.subscribers.set(turnId, subscriber);
    if (this.socket?.readyState === WebSocket.OPEN) this.sendSubscribe(turnId, subscriber);
    else this.connect();
    return () => {
      if (this.subscribers.get(turnId) !== subscriber) return;
      this.subscribers.delete(turnId);
      this.send({ type: "unsubscribe", turn_id: turnId });
    };
  }

  sendSubscribe(turnId, subscriber) {
    const after = subscriber.after();
    this.send(after ? { type: "subscribe", turn_id: turnId, after } : { type: "subscribe", turn_id: turnId });
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  connect() {
    if (this.socket || this.unusable) return; // connecting or open already
    clearTimeout(this.timer);
    this.timer = null;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/api/ws`);
    this.socket = socket;
    let opened = false;

    socket.addEventListener("open", () => {
      opened = true;
      this.everOpened = true;
      this.failedOpens = 0;
      this.reconnects = 0;
      for (const [turnId, subscriber] of this.subscribers) {
        subscriber.onConnection(false);
        this.sendSubscribe(turnId, subscriber);
      }
    });
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (!opened && !this.everOpened && ++this.failedOpens >= FAILED_OPENS_BEFORE_FALLBACK) {
        this.unusable = true;
        const subscribers = [...this.subscribers.values()];
        this.subscribers.clear();
        for (const subscriber of subscribers) subscriber.onFallback();
        return;
      }
      if (!this.subscribers.size) return; // reconnect when someone needs the channel again
      for (const subscriber of this.subscribers.values()) subscriber.onConnection(true);
      const delay = RECONNECT_DELAY_MS[Math.min(this.reconnects, RECONNECT_DELAY_MS.length - 1)];
      this.reconnects += 1;
      this.timer = setTimeout(() => this.connect(), delay);
    });
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    const subscriber = message?.turn_id ? this.subscribers.get(message.turn_id) : null;
    if (!subscriber) return;
    if (message.type === "event") {
      subscriber.onEvent({ id: message.id ?? null, event: message.event, data: message.data ?? {} });
    } else if (message.type === "error") {
      // The server ended this subscription; the follower asks the turn and subscribes again.
      this.subscribers.delete(message.turn_id);
      subscriber.onError({ code: message.code, message: message.message });
    }
  }
}

export const channel = new Channel();
