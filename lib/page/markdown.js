// Markdown for the page, rendered as the answer streams. marked parses, DOMPurify sanitizes (the
// model's output is untrusted: no script, handler or javascript: URL survives), highlight.js
// colours code. Only the last, still open block is rendered again as text arrives: every block
// before it is complete, so it is rendered once, appended and never touched again.
import { DOMPurify, hljs, Marked } from "./vendor.js";

const marked = new Marked({ gfm: true });

// Links open in a new tab and tell the target nothing about this page.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** A code block: highlighted when its language is known, with a label and a Copy button. */
function decorateCode(code) {
  const pre = code.parentElement;
  const language = /\blanguage-([\w+#-]+)/.exec(code.className)?.[1] ?? "";
  if (language && hljs.getLanguage(language)) {
    // highlight.js escapes the text it is given; its output holds only its own spans.
    code.innerHTML = hljs.highlight(code.textContent, { language, ignoreIllegals: true }).value;
    code.classList.add("hljs");
  }
  const frame = document.createElement("div");
  frame.className = "code";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const label = document.createElement("span");
  label.textContent = language || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy ${language || "code"}`);
  bar.append(label, copy);
  pre.replaceWith(frame);
  frame.append(bar, pre);
}

/** Block tokens as sanitized DOM. */
function render(tokens) {
  const html = marked.parser(tokens);
  const fragment = DOMPurify.sanitize(html, { RETURN_DOM_FRAGMENT: true, FORBID_ATTR: ["style"] });
  for (const code of fragment.querySelectorAll("pre > code")) decorateCode(code);
  for (const table of fragment.querySelectorAll("table")) {
    // Wide tables scroll on their own instead of widening the page.
    const wrap = document.createElement("div");
    wrap.className = "table";
    table.replaceWith(wrap);
    wrap.append(table);
  }
  return fragment;
}

/** Renders a whole text at once (a stored answer after a reload). */
export function renderMarkdown(container, text) {
  container.replaceChildren(render(marked.lexer(text)));
}

/**
 * An answer rendered as it streams into `container`. `append` adds text; rendering waits for the
 * next animation frame, so a burst of deltas costs one render; `flush` renders now.
 */
export class StreamingMarkdown {
  constructor(container, { onRender = () => {} } = {}) {
    this.container = container;
    this.onRender = onRender;
    this.text = "";
    /** Characters of `text` already rendered as complete blocks. */
    this.committed = 0;
    this.open = document.createElement("div");
    this.open.className = "open-block";
    container.append(this.open);
    this.frame = 0;
  }

  append(delta) {
    this.text += delta;
    this.frame ||= requestAnimationFrame(() => this.flush());
  }

  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    const rest = this.text.slice(this.committed);
    const tokens = marked.lexer(rest);
    let last = tokens.length - 1;
    while (last > 0 && tokens[last].type === "space") last--;
    // Every block before the last one is complete: a later delta can only extend the last.
    const complete = tokens.slice(0, Math.max(last, 0));
    const raw = complete.map((token) => token.raw).join("");
    let open = tokens;
    if (complete.length > 0 && rest.startsWith(raw)) {
      this.open.before(render(complete));
      this.committed += raw.length;
      open = tokens.slice(last);
    }
    this.open.replaceChildren(render(open));
    this.onRender();
  }
}
