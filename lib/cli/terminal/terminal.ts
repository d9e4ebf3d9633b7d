/**
 * The terminal client's pure parts: arguments, colour choice, styles, the stats line and the
 * spinner. No I/O here, so all of it is tested without a terminal.
 */
import { parseArgs } from "node:util";
import type { ChatDone } from "../../chat/encoding.ts";
import { formatMs, formatUsd } from "../../chat/encoding.ts";

/** The terminal client's settings. */
export interface ChatCliOptions {
  url: string;
  key?: string;
  model?: string;
  system?: string;
  help: boolean;
}

/** The default sluice URL: the local server. */
export const DEFAULT_URL = "http://localhost:8000";

/** Usage text for `--help`. */
export const USAGE = `deno task chat [--url URL] [--key KEY] [--model MODEL] [--system TEXT]

Chat with Claude through sluice, answers streamed as they are written.

  --url URL       sluice's address (default ${DEFAULT_URL}, or SLUICE_URL)
  --key KEY       a gateway key (default: the SLUICE_KEY environment variable)
  --model MODEL   the model (default: the server's SLUICE_DEFAULT_MODEL)
  --system TEXT   a system prompt for the conversation

Type a message and press Enter. Ctrl-C stops an answer; quit, exit or Ctrl-D leaves.
Colours are off when NO_COLOR is set or the output is not a terminal.`;

/** Thrown for arguments that make no sense; the message says which. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** Parses the command line, with `env` (SLUICE_KEY, SLUICE_URL) as fallback. */
export function parseChatArgs(
  args: string[],
  env: Record<string, string | undefined>,
): ChatCliOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        url: { type: "string" },
        key: { type: "string" },
        model: { type: "string" },
        system: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const url = values.url ?? env.SLUICE_URL ?? DEFAULT_URL;
  try {
    const parsed = new URL(url);
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new Error();
  } catch {
    throw new UsageError(`--url must be an http(s) URL (got ${JSON.stringify(url)})`);
  }
  return {
    url,
    key: values.key ?? (env.SLUICE_KEY || undefined),
    model: values.model,
    system: values.system,
    help: values.help ?? false,
  };
}

/** Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org) or TERM=dumb. */
export function colorEnabled(
  isTerminal: boolean,
  env: Record<string, string | undefined>,
): boolean {
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== "") return false;
  if (env.TERM === "dumb") return false;
  return isTerminal;
}

const SGR = {
  bold: ["\x1b[1m", "\x1b[22m"],
  dim: ["\x1b[2m", "\x1b[22m"],
  blue: ["\x1b[94m", "\x1b[39m"],
  green: ["\x1b[92m", "\x1b[39m"],
  red: ["\x1b[91m", "\x1b[39m"],
} as const;

/** Text styles; with colour off each one returns its text unchanged. */
export interface Styles {
  you(text: string): string;
  claude(text: string): string;
  answer(text: string): string;
  dim(text: string): string;
  error(text: string): string;
}

/** The client's styles: blue for you, green for Claude (as in the tutorial), dim for stats. */
export function styles(color: boolean): Styles {
  const wrap = (...codes: (keyof typeof SGR)[]) => (text: string) =>
    color && text !== ""
      ? codes.map((c) => SGR[c][0]).join("") + text +
        codes.map((c) => SGR[c][1]).reverse().join("")
      : text;
  return {
    you: wrap("bold", "blue"),
    claude: wrap("bold", "green"),
    answer: wrap("green"),
    dim: wrap("dim"),
    error: wrap("red"),
  };
}

/**
 * The line after an answer,
 * `612 ms to first token · 18 in / 54 out tokens · 1840 ms · 31 tok/s · $0.000576`
 * (no cost when the model has no price; then the stop reason when it is not `end_turn`).
 */
export function statsText(done: ChatDone): string {
  const parts = [
    `${formatMs(done.ttft_ms)} to first token`,
    `${done.usage.input_tokens} in / ${done.usage.output_tokens} out tokens`,
    formatMs(done.total_ms),
  ];
  if (done.output_tokens_per_second !== null) {
    parts.push(`${Math.round(done.output_tokens_per_second)} tok/s`);
  }
  // A server older than the cost figures sends no `cost_usd`: nothing is shown then.
  if (typeof done.cost_usd === "number") parts.push(formatUsd(done.cost_usd));
  if (done.stop_reason && done.stop_reason !== "end_turn") parts.push(done.stop_reason);
  if (done.stored === false) parts.push("not kept: the conversation is full");
  return parts.join(" · ");
}

const FRAMES = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/**
 * The bytes that draw spinner frame `i` in place: the frame, then a backspace so the next
 * frame (or the first token) overwrites it.
 */
export function spinnerFrame(i: number): string {
  return `${FRAMES[i % FRAMES.length]}\b`;
}

/** Erases the spinner (a space over it, then back). */
export const SPINNER_CLEAR = " \b";

/** True for the words that leave the chat. */
export function isQuit(line: string): boolean {
  return /^(quit|exit|:q)$/i.test(line.trim());
}
