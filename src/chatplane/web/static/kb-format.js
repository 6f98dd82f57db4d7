// Words and numbers shown on the knowledge pages: sizes, counts, indexing states.

export const STATUS = {
  queued: { label: "Queued", tone: "neutral" },
  indexing: { label: "Indexing", tone: "info" },
  ready: { label: "Ready", tone: "success" },
  failed: { label: "Failed", tone: "danger" },
};

const STAGES = {
  extracting: "reading the text",
  chunking: "splitting into passages",
  embedding: "embedding",
  writing: "writing the index",
};

/** "12 KB", "3.4 MB". */
export function formatBytes(bytes) {
  const n = Number(bytes) || 0;
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** The stage of an indexing event, in words: "embedding 3/10". */
export function stageText(data) {
  const stage = STAGES[data?.stage] || data?.stage || "";
  const count = Number.isFinite(data?.done) && Number.isFinite(data?.total) ? ` ${data.done}/${data.total}` : "";
  return `${stage}${count}`;
}

export function failureText(error) {
  if (!error) return "The document could not be indexed.";
  if (typeof error === "string") return error;
  return error.message || error.detail || error.code || "The document could not be indexed.";
}

