// A small, safe Markdown renderer for assistant messages.
//
// Safety model: every piece of source text is HTML-escaped before it reaches the output; the
// only tags in the output are the ones built here, and links are kept only for http(s) URLs.
// Supported: headings, paragraphs (single newlines become <br>), **bold**, *italic*,
// ~~strike~~, `inline code`, fenced code blocks (``` or ~~~, also while still unclosed during
// streaming), bullet and numbered lists (nested by indentation), blockquotes, rules, links
// [text](https://...) and bare https:// URLs.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => ESCAPES[ch]);
}

const SAFE_URL = /^https?:\/\/[^\s<>"'`\u0000-\u001f]+$/i;

export function isSafeUrl(url) {
  return SAFE_URL.test(url);
}

// ---------------------------------------------------------------- inline

// Placeholders keep already-rendered HTML (code spans, links) away from later passes.
// \u0000 cannot occur in the text: it is stripped from the source first.
const HOLE = /\u0000(\d+)\u0000/g;

function renderInline(raw, { links = true, holes = [] } = {}) {
  const hold = (html) => `\u0000${holes.push(html) - 1}\u0000`;
  let text = raw;

  // Code spans first: nothing inside them is Markdown.
  text = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, ticks, code) =>
    hold(`<code>${escapeHtml(code.trim() === "" ? code : code.replace(/^ (.*) $/s, "$1"))}</code>`),
  );

  if (links) {
    // [text](url "optional title")
    text = text.replace(
      /\[([^\]\n]+)\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+"[^"]*")?\s*\)/g,
      (whole, label, url) => {
        const inner = renderInline(label, { links: false, holes });
        if (!isSafeUrl(url)) return hold(inner);
        return hold(
          `<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer nofollow">${inner}</a>`,
        );
      },
    );
    // Bare URLs; trailing punctuation stays outside the link.
    text = text.replace(/\bhttps?:\/\/[^\s<>"'`\u0000]+/gi, (match) => {
      const url = match.replace(/[.,;:!?)\]]+$/, "");
      const tail = match.slice(url.length);
      if (!isSafeUrl(url)) return match;
      const safe = escapeHtml(url);
      return (
        hold(`<a href="${safe}" target="_blank" rel="noopener noreferrer nofollow">${safe}</a>`) +
        tail
      );
    });
  }

  let html = escapeHtml(text);
  html = html
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([\s\S]*?[^\s*])\*(?![*\w])/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
    .replace(/\n/g, "<br>");
  // Holes may nest (a link label holding code), so fill until none is left.
  for (let pass = 0; pass < 4 && html.includes("\u0000"); pass += 1) {
    html = html.replace(HOLE, (_, n) => holes[Number(n)] ?? "");
  }
  return html;
}

// ---------------------------------------------------------------- blocks

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const BLANK = /^\s*$/;

function indentOf(line) {
  return line.match(/^ */)[0].length;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    LIST_ITEM.test(line);
}

function renderCodeBlock(lang, code) {
  const safeLang = escapeHtml(lang.toLowerCase().replace(/[^\w+#.-]/g, ""));
  const cls = safeLang ? ` class="language-${safeLang}"` : "";
  return (
    `<div class="code-block"><div class="code-head"><span class="code-lang">${safeLang || "text"}</span>` +
    `<button type="button" class="copy-btn" data-copy-code aria-label="Copy code">Copy</button></div>` +
    `<pre><code${cls}>${escapeHtml(code)}</code></pre></div>`
  );
}

function renderList(lines, start) {
  const first = lines[start].match(LIST_ITEM);
  const baseIndent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const items = [];
  let i = start;
  let loose = false;

  while (i < lines.length) {
    const m = lines[i].match(LIST_ITEM);
    if (!m || m[1].length !== baseIndent || /\d/.test(m[2]) !== ordered) break;
    const contentIndent = m[1].length + m[2].length + 1;
    const body = [m[3]];
    i += 1;
    while (i < lines.length) {
      const line = lines[i];
      if (BLANK.test(line)) {
        // A blank line continues the item only when indented content follows.
        const next = lines[i + 1];
        if (next !== undefined && !BLANK.test(next) && indentOf(next) > baseIndent) {
          body.push("");
          loose = loose || !LIST_ITEM.test(next);
          i += 1;
          continue;
        }
        break;
      }
      if (indentOf(line) > baseIndent) {
        body.push(line.slice(Math.min(indentOf(line), contentIndent)));
        i += 1;
        continue;
      }
      if (LIST_ITEM.test(line) || startsBlock(line)) break;
      body.push(line.trim()); // lazy continuation of the item's paragraph
      i += 1;
    }
    items.push(body);
    // A blank line between two items of this list makes the list loose.
    if (i < lines.length && BLANK.test(lines[i])) {
      const next = lines[i + 1];
      const nm = next === undefined ? null : next.match(LIST_ITEM);
      if (nm && nm[1].length === baseIndent && /\d/.test(nm[2]) === ordered) {
        loose = true;
        i += 1;
      }
    }
  }

  const rendered = items.map((body) => {
    let html = renderBlocks(body);
    if (!loose) html = html.replace(/^<p>([\s\S]*?)<\/p>/, "$1");
    return `<li>${html}</li>`;
  });
  const startNumber = ordered ? parseInt(first[2], 10) : 1;
  const open = ordered ? (startNumber !== 1 ? `<ol start="${startNumber}">` : "<ol>") : "<ul>";
  return { html: `${open}${rendered.join("")}${ordered ? "</ol>" : "</ul>"}`, next: i };
}

function renderBlocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];

    if (BLANK.test(line)) {
      i += 1;
      continue;
    }

    const fence = line.match(FENCE);
    if (fence) {
      const marker = fence[1];
      const indent = indentOf(line);
      const code = [];
      i += 1;
      while (i < lines.length) {
        const close = lines[i].match(/^ {0,3}(`{3,}|~{3,})\s*$/);
        if (close && close[1][0] === marker[0] && close[1].length >= marker.length) {
          i += 1;
          break;
        }
        code.push(indent ? lines[i].replace(new RegExp(`^ {0,${indent}}`), "") : lines[i]);
        i += 1;
      }
      out.push(renderCodeBlock(fence[2], code.join("\n")));
      continue;
    }

    const heading = line.match(HEADING);
    if (heading) {
      const level = heading[1].length;
      out.push(`<h${level}>${renderInline(heading[2] || "")}</h${level}>`);
      i += 1;
      continue;
    }

    if (RULE.test(line)) {
      out.push("<hr>");
      i += 1;
      continue;
    }

    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && !BLANK.test(lines[i])) {
        const q = lines[i].match(QUOTE);
        inner.push(q ? q[1] : lines[i]);
        i += 1;
      }
      out.push(`<blockquote>${renderBlocks(inner)}</blockquote>`);
      continue;
    }

    if (LIST_ITEM.test(line)) {
      const list = renderList(lines, i);
      out.push(list.html);
      i = list.next;
      continue;
    }

    const para = [];
    while (i < lines.length && !BLANK.test(lines[i]) && (para.length === 0 || !startsBlock(lines[i]))) {
      para.push(lines[i].trim());
      i += 1;
    }
    out.push(`<p>${renderInline(para.join("\n"))}</p>`);
  }
  return out.join("");
}

/** Render Markdown source to an HTML string that is safe to assign to innerHTML. */
export function renderMarkdown(source) {
  const text = String(source ?? "")
    .replace(/\u0000/g, "")
    .replace(/\r\n?/g, "\n")
    .replace(/\t/g, "    ");
  return renderBlocks(text.split("\n"));
}
