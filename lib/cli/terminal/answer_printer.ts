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
  const { write, markdown, live } = options;
  const dim = options.dim ?? ((text: string) => text);
  const maxRows = Math.max(3, options.rows - 2);
  let text = "";
  /** Characters of `text` written for good as complete blocks. */
  let committed = 0;
  /** The newlines that end the last written block, written only before what follows it. */
  let gap = "";
  /** The open block's lines on screen (the cursor is at the end of the last one). */
  let shown: string[] = [];
  let appending = false;
  let statusText = "";

  const rowsOf = (line: string) => Math.max(1, Math.ceil(stringWidth(line) / options.columns));
  const rowsOfAll = (lines: string[]) => lines.reduce((n, line) => n + rowsOf(line), 0);
  const up = (rows: number) => (rows > 1 ? `\x1b[${rows - 1}A` : "");

  function writeGap() {
    if (gap) write(gap);
    gap = "";
  }

  /** Writes rendered blocks for good, keeping their trailing newlines for later. */
  function writeBlocks(rendered: string) {
    const body = rendered.replace(/\n+$/, "");
    if (body === "") return;
    writeGap();
    write(body);
    gap = rendered.slice(body.length) || "\n";
  }

  /**
   * Replaces the open block's lines on screen with `lines`. `kind`: the block is still open and
   * its rows only grow at the end (`stable`: a paragraph, code), still open and may change
   * anywhere (`unstable`: a table's columns widen, a list turns loose), or complete (`final`).
   */
  function draw(lines: string[], kind: "stable" | "unstable" | "final") {
    if (!appending && (kind === "final" || rowsOfAll(lines) <= maxRows)) {
      if (shown.length > 0) write(`\r${up(rowsOfAll(shown))}\x1b[J`);
      else if (lines.length > 0) writeGap();
      if (lines.length > 0) write(lines.join("\n"));
      shown = lines;
      return;
    }
    if (!appending && kind === "unstable") {
      // Too tall to redraw, and rows above the last could still change: show that it is
      // coming, and the block itself once complete.
      draw([dim("…"), ...(statusText ? [dim(statusText)] : [])], "final");
      return;
    }
    appending = true;
    if (shown.length === 0) {
      writeGap();
      write(lines.join("\n"));
    } else {
      // Only the last row on screen can still change; the ones above it stay as written.
      const k = shown.length;
      write(`\r${up(rowsOf(shown[k - 1]))}\x1b[J${lines[k - 1] ?? ""}`);
      if (lines.length > k) write(`\n${lines.slice(k).join("\n")}`);
    }
    shown = lines.length >= shown.length ? lines : shown;
  }

  function openLines(rendered: string): string[] {
    const body = rendered.replace(/\n+$/, "");
    const lines = body === "" ? [] : body.split("\n");
    return statusText ? [...lines, dim(statusText)] : lines;
  }

  /** Renders `text` from `committed`: complete blocks for good, the open one (live) redrawn. */
  function update(final: boolean) {
    const rest = text.slice(committed);
    const tokens = markdown.lex(rest);
    let last = tokens.length - 1;
    while (last > 0 && tokens[last].type === "space") last--;
    const complete = final ? tokens : tokens.slice(0, Math.max(last, 0));
    const raw = complete.map((token) => token.raw).join("");
    if (complete.length > 0 && rest.startsWith(raw)) {
      const rendered = markdown.render(complete);
      if (shown.length > 0) {
        // The open block became complete: its final rendering replaces what was drawn of it.
        const body = rendered.replace(/\n+$/, "");
        draw(body.split("\n"), "final");
        gap = rendered.slice(body.length) || "\n";
        shown = [];
        appending = false;
      } else {
        writeBlocks(rendered);
      }
      committed += raw.length;
    }
    if (!live || final) return;
    const open = tokens.slice(complete.length > 0 && rest.startsWith(raw) ? complete.length : 0);
    const type = open.find((token) => token.type !== "space")?.type;
    draw(
      openLines(markdown.render(open)),
      type === "code" || type === "paragraph" ? "stable" : "unstable",
    );
  }

  return {
    append(delta) {
      text += delta;
      update(false);
    },
    status(value) {
      if (!live || value === statusText) return;
      statusText = value;
      update(false);
    },
    end() {
      statusText = "";
      update(true);
      if (text !== "") write("\n");
    },
    stop() {
      statusText = "";
      // Live, what is on screen stays (it is what was received); otherwise the open block is
      // written as it stands.
      if (live) {
        if (shown.length > 0) {
          draw(openLines(markdown.render(markdown.lex(text.slice(committed)))), "final");
        }
      } else {
        update(true);
      }
      if (text !== "") write("\n");
    },
  };
}
