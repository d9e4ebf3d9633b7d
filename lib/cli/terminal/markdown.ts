/**
 * Markdown for the terminal client: marked parses, marked-terminal renders (headings, bold,
 * lists, tables, code blocks highlighted by cli-highlight), reflowed at word boundaries to the
 * terminal's width. With colour off, every style is plain text and headings keep their `#`.
 */
import { Marked, type Token } from "marked";
import { markedTerminal } from "marked-terminal";
import chalk from "chalk";
import wrapAnsi from "wrap-ansi";
import stringWidth from "string-width";

/** Options for {@link createTerminalMarkdown}. */
export interface TerminalMarkdownOptions {
  color: boolean;
  /** Columns to wrap at. */
  width: number;
}

/** Renders markdown blocks for a terminal. */
export interface TerminalMarkdown {
  /** The text's block tokens. */
  lex(text: string): Token[];
  /** Block tokens as terminal text, each block ending in a blank line. */
  render(tokens: Token[]): string;
}

const plain = (text: string) => text;

/** Creates a renderer; `color` also sets chalk's level (marked-terminal's colours). */
export function createTerminalMarkdown(options: TerminalMarkdownOptions): TerminalMarkdown {
  // marked-terminal and its highlighter colour through the shared chalk; its level is the
  // client's colour choice, not chalk's guess from the environment.
  chalk.level = options.color ? Math.max(chalk.level, 1) as 1 | 2 | 3 : 0;
  const styles = options.color ? {} : Object.fromEntries(
    [
      "code",
      "blockquote",
      "html",
      "heading",
      "firstHeading",
      "hr",
      "listitem",
      "table",
      "paragraph",
      "strong",
      "em",
      "codespan",
      "del",
      "link",
      "href",
    ].map((name) => [name, plain]),
  );
  const marked = new Marked(
    markedTerminal({
      width: Math.max(20, options.width),
      reflowText: true,
      tab: 2,
      emoji: false,
      // In colour a heading stands out by its style; without, the `#` says what it is.
      showSectionPrefix: !options.color,
      tableOptions: options.color ? {} : { style: { head: [], border: [] } },
      ...styles,
    }) as never,
  );
  // marked-terminal prints a text token's raw text, so `**bold**` inside a list item stayed
  // literal with marked 18's tokens: render its inline tokens instead.
  marked.use({
    renderer: {
      text(token) {
        return typeof token === "object" && "tokens" in token && token.tokens
          ? this.parser.parseInline(token.tokens)
          : false;
      },
    },
  });
  const width = Math.max(20, options.width);
  return {
    lex: (text) => marked.lexer(text),
    render: (tokens) =>
      tokens.map((token) => {
        const out = String(marked.parser([token]));
        // Code keeps its lines (wrapping would change it) and a table its box; marked-terminal
        // reflows paragraphs and headings, not list items or quotes: those are wrapped here.
        return token.type === "code" || token.type === "table" ? out : wrapLines(out, width);
      }).join(""),
  };
}

/**
 * Wraps each line longer than `width` at word boundaries; its continuation rows are indented
 * under the line's text (after a list bullet, say).
 */
function wrapLines(text: string, width: number): string {
  return text.split("\n").map((line) => {
    if (stringWidth(line) <= width) return line;
    // deno-lint-ignore no-control-regex -- colour codes may precede the indent
    const plain = line.replace(/\x1b\[[0-9;]*m/g, "");
    const hang = /^\s*(?:[*+-]|\d+\.)?\s*/.exec(plain)![0].length;
    const rows = wrapAnsi(line, width - hang, { hard: true, trim: false }).split("\n");
    return rows.map((row, i) =>
      // deno-lint-ignore no-control-regex -- the spaces a wrap left, after any colour codes
      i === 0 ? row.trimEnd() : " ".repeat(hang) + row.replace(/^((?:\x1b\[[0-9;]*m)*) +/, "$1")
    ).join("\n");
  }).join("\n");
}
