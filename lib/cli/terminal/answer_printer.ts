/**
 * Prints an answer's markdown as it streams. Blocks before the last one are complete: each is
 * rendered once and written for good. The last, still open block is shown as it grows:
 *
 * - live (a terminal): it is redrawn in place (cursor up, clear, write) while it fits on the
 *   screen; taller than that (a long code block), only its last row is rewritten and new rows
 *   are appended, since rows scrolled off the screen cannot be reached any more;
 * - not live (a pipe, a dumb terminal): nothing is written until the block is complete, so the
 *   output holds no cursor movements.
 *
 * Hand-written because no terminal markdown library streams: marked-terminal renders whole
 * documents, so this decides what is complete and what to redraw.
 */
import stringWidth from "string-width";
import type { Token } from "marked";
import type { TerminalMarkdown } from "./markdown.ts";

/** Options for {@link createAnswerPrinter}. */
export interface AnswerPrinterOptions {
  write(text: string): void;
  markdown: TerminalMarkdown;
  live: boolean;
  /** The terminal's size (columns to count wrapped rows, rows to know what can be redrawn). */
  columns: number;
  rows: number;
  /** Styles the status line (dim). */
  dim?: (text: string) => string;
}

/** Prints one answer. */
export interface AnswerPrinter {
  append(delta: string): void;
  /** A line under the open block ("reconnecting…"); "" removes it. Live only. */
  status(text: string): void;
  /** The answer is whole: writes what is left, ending on a line of its own. */
  end(): void;
  /** The answer stops here (stopped or failed): writes what was received, then a newline. */
  stop(): void;
}

/** Creates the printer of one answer. */
export function createAnswerPrinter(options: AnswerPrinterOptions): AnswerPrinter {
  const { markdown, live } = options;
  const screen = new Screen(options);
  let text = "";
  /** Characters of `text` written for good as complete blocks. */
  let committed = 0;

  /** Renders `text` from `committed`: complete blocks for good, the open one (live) redrawn. */
  function update(final: boolean) {
    const rest = text.slice(committed);
    const tokens = markdown.lex(rest);
    const complete = completeBlocks(tokens, rest, final);
    if (complete.count > 0) {
      const rendered = markdown.render(tokens.slice(0, complete.count));
      if (screen.drawn) screen.complete(rendered);
      else screen.writeBlocks(rendered);
      committed += complete.length;
    }
    if (!live || final) return;
    const open = tokens.slice(complete.count);
    const type = open.find((token) => token.type !== "space")?.type;
    screen.draw(
      screen.openLines(markdown.render(open)),
      type === "code" || type === "paragraph" ? "stable" : "unstable",
    );
  }

  return {
    append(delta) {
      text += delta;
      update(false);
    },
    status(value) {
      if (!live || value === screen.status) return;
      screen.status = value;
      update(false);
    },
    end() {
      screen.status = "";
      update(true);
      if (text !== "") options.write("\n");
    },
    stop() {
      screen.status = "";
      // Live, what is on screen stays (it is what was received); otherwise the open block is
      // written as it stands.
      if (live) {
        if (screen.drawn) {
          screen.draw(
            screen.openLines(markdown.render(markdown.lex(text.slice(committed)))),
            "final",
          );
        }
      } else {
        update(true);
      }
      if (text !== "") options.write("\n");
    },
  };
}

/**
 * The complete blocks at the start of `tokens` (lexed from `rest`): all of them when `final`,
 * otherwise all before the last block that is not space (it may still grow). `count` is 0 when
 * their source is not where `rest` starts; `length`: the characters of `rest` they cover.
 */
function completeBlocks(
  tokens: Token[],
  rest: string,
  final: boolean,
): { count: number; length: number } {
  let last = tokens.length - 1;
  while (last > 0 && tokens[last].type === "space") last--;
  const complete = final ? tokens : tokens.slice(0, Math.max(last, 0));
  const raw = complete.map((token) => token.raw).join("");
  return complete.length > 0 && rest.startsWith(raw)
    ? { count: complete.length, length: raw.length }
    : { count: 0, length: 0 };
}

/**
 * The answer on the terminal: blocks written for good, and under them the open block's lines
 * (and the status line), drawn again as the block grows.
 */
class Screen {
  /** The status line under the open block; "" for none. */
  status = "";
  /** The newlines that end the last written block, written only before what follows it. */
  #gap = "";
  /** The open block's lines on screen (the cursor is at the end of the last one). */
  #shown: string[] = [];
  #appending = false;
  readonly #write: (text: string) => void;
  readonly #dim: (text: string) => string;
  readonly #columns: number;
  readonly #maxRows: number;

  constructor(options: AnswerPrinterOptions) {
    this.#write = options.write;
    this.#dim = options.dim ?? ((text: string) => text);
    this.#columns = options.columns;
    this.#maxRows = Math.max(3, options.rows - 2);
  }

  /** Whether lines of the open block are on screen. */
  get drawn(): boolean {
    return this.#shown.length > 0;
  }

  /** Writes rendered blocks for good, keeping their trailing newlines for later. */
  writeBlocks(rendered: string) {
    const body = rendered.replace(/\n+$/, "");
    if (body === "") return;
    this.#writeGap();
    this.#write(body);
    this.#gap = rendered.slice(body.length) || "\n";
  }

  /** The open block became complete: its final rendering replaces what was drawn of it. */
  complete(rendered: string) {
    const body = rendered.replace(/\n+$/, "");
    this.draw(body.split("\n"), "final");
    this.#gap = rendered.slice(body.length) || "\n";
    this.#shown = [];
    this.#appending = false;
  }

  /** The open block's rendering as lines on screen, with the status line under them. */
  openLines(rendered: string): string[] {
    const body = rendered.replace(/\n+$/, "");
    const lines = body === "" ? [] : body.split("\n");
    return this.status ? [...lines, this.#dim(this.status)] : lines;
  }

  /**
   * Replaces the open block's lines on screen with `lines`. `kind`: the block is still open and
   * its rows only grow at the end (`stable`: a paragraph, code), still open and may change
   * anywhere (`unstable`: a table's columns widen, a list turns loose), or complete (`final`).
   */
  draw(lines: string[], kind: "stable" | "unstable" | "final") {
    const shown = this.#shown;
    if (!this.#appending && (kind === "final" || this.#rowsOfAll(lines) <= this.#maxRows)) {
      if (shown.length > 0) this.#write(`\r${up(this.#rowsOfAll(shown))}\x1b[J`);
      else if (lines.length > 0) this.#writeGap();
      if (lines.length > 0) this.#write(lines.join("\n"));
      this.#shown = lines;
      return;
    }
    if (!this.#appending && kind === "unstable") {
      // Too tall to redraw, and rows above the last could still change: show that it is
      // coming, and the block itself once complete.
      this.draw([this.#dim("…"), ...(this.status ? [this.#dim(this.status)] : [])], "final");
      return;
    }
    this.#appending = true;
    if (shown.length === 0) {
      this.#writeGap();
      this.#write(lines.join("\n"));
    } else {
      // Only the last row on screen can still change; the ones above it stay as written.
      const k = shown.length;
      this.#write(`\r${up(this.#rowsOf(shown[k - 1]))}\x1b[J${lines[k - 1] ?? ""}`);
      if (lines.length > k) this.#write(`\n${lines.slice(k).join("\n")}`);
    }
    this.#shown = lines.length >= shown.length ? lines : shown;
  }

  #writeGap() {
    if (this.#gap) this.#write(this.#gap);
    this.#gap = "";
  }

  #rowsOf(line: string): number {
    return Math.max(1, Math.ceil(stringWidth(line) / this.#columns));
  }

  #rowsOfAll(lines: string[]): number {
    return lines.reduce((n, line) => n + this.#rowsOf(line), 0);
  }
}

/** The cursor movement up to the first of `rows` rows, from the last. */
function up(rows: number): string {
  return rows > 1 ? `\x1b[${rows - 1}A` : "";
}
