// A small, safe Markdown renderer for model answers: every piece of text is HTML-escaped
// before any tag of ours is added, links must be http(s), and raw HTML in the input
// stays text. Covers what chat answers use: fenced code (highlighted), inline code,
// headings, bold, italic, links, lists, quotes and paragraphs.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const KEYWORDS = new Set(("if else elif for while do return def class function fn let const var " +
  "import from export as async await yield try except catch finally raise throw new in of is not " +
  "and or None True False null true false undefined this self struct enum impl pub use mod match " +
  "case switch break continue default static void int float double char bool string package func " +
  "type interface go defer select lambda with pass del global nonlocal assert extends implements").split(" "));

// One regex, alternatives in priority order: comments, strings, numbers, words.
const TOKENS = /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/)|("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_][A-Za-z0-9_]*)/g;

export function highlight(code, lang = "") {
  const hashComments = /^(py|python|sh|bash|shell|ruby|rb|yaml|yml|toml|r|perl|make|dockerfile)$/i.test(lang);
  let out = "";
  let last = 0;
  for (const m of code.matchAll(TOKENS)) {
    out += escapeHtml(code.slice(last, m.index));
    last = m.index + m[0].length;
    const [text, comment, str, num, word] = m;
    if (comment && (!comment.startsWith("#") || hashComments)) out += span("c", text);
    else if (comment) { out += escapeHtml(text[0]); last = m.index + 1; } // '#' is not a comment here
    else if (str) out += span("s", text);
    else if (num) out += span("n", text);
    else if (word && KEYWORDS.has(word)) out += span("k", text);
    else out += escapeHtml(text);
  }
  return out + escapeHtml(code.slice(last));
}
const span = (cls, text) => `<span class="tok-${cls}">${escapeHtml(text)}</span>`;

function inline(text) {
  // Code spans first, so nothing inside them is formatted; then the rest, escaped.
  return text.split(/(`[^`\n]+`)/).map((part) => {
    if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) {
      return `<code>${escapeHtml(part.slice(1, -1))}</code>`;
    }
    return escapeHtml(part)
      .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, (_, label, url) =>
        `<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`)
      .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*\w])\*([^*\n]+)\*(?!\w)/g, "$1<em>$2</em>");
  }).join("");
}

export function renderMarkdown(source) {
  const lines = String(source).replace(/\r\n/g, "\n").split("\n");
  const out = [];
  let para = [];
  let list = null; // "ul" | "ol"
  const flushPara = () => { if (para.length) out.push(`<p>${inline(para.join(" "))}</p>`); para = []; };
  const closeList = () => { if (list) out.push(`</${list}>`); list = null; };
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+-]*)/);
    if (fence) {
      flushPara(); closeList();
      const code = [];
      for (i += 1; i < lines.length && !/^\s*```/.test(lines[i]); i += 1) code.push(lines[i]);
      const lang = fence[1] || "";
      // An unclosed fence (a stream still running) renders as code all the same.
      out.push(`<pre class="code"${lang ? ` data-lang="${escapeHtml(lang)}"` : ""}><code>${highlight(code.join("\n"), lang)}</code></pre>`);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
    const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
    if (heading) {
      flushPara(); closeList();
      const level = Math.min(6, heading[1].length + 2); // the page already has h1 and h2
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
    } else if (bullet || numbered) {
      flushPara();
      const kind = bullet ? "ul" : "ol";
      if (list !== kind) { closeList(); out.push(`<${kind}>`); list = kind; }
      out.push(`<li>${inline((bullet || numbered)[1])}</li>`);
    } else if (line.startsWith(">")) {
      flushPara(); closeList();
      out.push(`<blockquote>${inline(line.replace(/^>\s?/, ""))}</blockquote>`);
    } else if (!line.trim()) {
      flushPara(); closeList();
    } else {
      closeList();
      para.push(line.trim());
    }
  }
  flushPara(); closeList();
  return out.join("\n");
}
