// While the database (or the service) is unreachable: a banner instead of broken pages.
// An API call that answers 503 `database_unavailable` or `service_unavailable` reports the
// outage; the banner stays while /readyz is polled, then goes, and the reads that failed
// are sent again (see `request` in api.js).

const OUTAGE_CODES = new Set(["database_unavailable", "service_unavailable"]);
const MESSAGES = {
  database_unavailable: "The database is unreachable; your work is safe; retrying…",
  service_unavailable: "The service is unavailable; your work is safe; retrying…",
};
const MIN_POLL_MS = 1000;
const MAX_POLL_MS = 10000;

let banner = null;
let pollTimer = null;
let waiters = [];

/** Whether an answer means "temporarily down, try again" rather than a real error. */
export function isOutage(status, code) {
  return status === 503 && OUTAGE_CODES.has(code);
}

/** Whether the banner is up. */
export function outageActive() {
  return banner !== null && !banner.hidden;
}

/** Show the banner (once) and poll readiness until the service is back. */
export function reportOutage(code, retryAfterS) {
  showBanner(MESSAGES[code] || MESSAGES.service_unavailable);
  if (pollTimer !== null) return;
  const seconds = Number(retryAfterS);
  const every = Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 2000;
  schedulePoll(Math.min(MAX_POLL_MS, Math.max(MIN_POLL_MS, every)));
}

/** Resolves once the service is ready again; rejects with an AbortError if aborted. */
export function whenRecovered(signal) {
  if (!outageActive()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const waiter = { resolve, reject, signal };
    waiters.push(waiter);
    signal?.addEventListener(
      "abort",
      () => {
        waiters = waiters.filter((w) => w !== waiter);
        reject(signal.reason ?? new DOMException("Aborted", "AbortError"));
      },
      { once: true },
    );
  });
}

function schedulePoll(everyMs) {
  pollTimer = window.setTimeout(async () => {
    if (await ready()) {
      pollTimer = null;
      recovered();
    } else {
      schedulePoll(everyMs);
    }
  }, everyMs);
}

async function ready() {
  try {
    const response = await fetch("/readyz", { cache: "no-store", credentials: "omit" });
    return response.ok;
  } catch {
    return false; // the server itself is away: keep polling
  }
}

function recovered() {
  if (banner !== null) banner.hidden = true;
  const woken = waiters;
  waiters = [];
  woken.forEach((waiter) => waiter.resolve());
}

function showBanner(text) {
  if (banner === null) {
    banner = document.createElement("div");
    banner.className = "outage-banner";
    banner.setAttribute("role", "status");
    banner.setAttribute("aria-live", "polite");
    const dot = document.createElement("span");
    dot.className = "outage-dot";
    dot.setAttribute("aria-hidden", "true");
    const label = document.createElement("span");
    label.className = "outage-text";
    banner.append(dot, label);
    document.body.prepend(banner);
  }
  banner.querySelector(".outage-text").textContent = text;
  banner.hidden = false;
}
