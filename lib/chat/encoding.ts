/**
 * How `/chat` writes an answer: plain text for curl, small SSE events for browsers, JSON when not
 * streaming. Pure functions; chat_view.ts drives them.
 *
 * SSE events (each `data` is one line of JSON):
 * - `start` `{request_id, conversation_id, stream_id?}` once, first (`stream_id` when the stream
 *   is resumable, lib/chat/resume.ts; every event then has an `id:` line);
 * - `text` `{text}` for each piece of the answer;
 * - `done` {@link ChatDone} once, last, when the answer completed;
 * - `error` `{type:"error", error:{type, message}}` (Anthropic's shape) instead of `done` when
 *   the answer failed after the stream started.
 */
import type { TokenUsage } from "../stats/request_summary.ts";

/** The wire formats `/chat` speaks. */
export type ChatFormat = "text" | "sse" | "json";

/** What the final `done` event (or the stats line, or the JSON answer) reports. */
export interface ChatDone {
  request_id: string;
  conversation_id: string | null;
  model: string | null;
  stop_reason: string | null;
  usage: TokenUsage;
  /** Request arrival to the first piece of text sent. */
  ttft_ms: number | null;
  total_ms: number;
  output_tokens_per_second: number | null;
  /** What the answer cost in USD (lib/stats/cost.ts); null when its model has no price. */
  cost_usd: number | null;
  /** With a conversation: whether this exchange was stored (false: over the byte bound). */
  stored?: boolean;
}

/** Picks the streaming format from `Accept`: SSE when it asks for it, otherwise plain text. */
export function chatFormat(accept: string | undefined | null): "text" | "sse" {
  return /(^|,)\s*text\/event-stream\b/i.test(accept ?? "") ? "sse" : "text";
}

/** True when the `stats` query flag asks for the plain-text stats line (`?stats`, `?stats=1`). */
export function statsRequested(value: string | undefined | null): boolean {
  if (value === undefined || value === null) return false;
  return !/^(0|false|no|off)$/i.test(value.trim());
}

/** One SSE event with a JSON payload. */
export function sseEvent(name: string, data: unknown): string {
  return `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** The error payload, in Anthropic's shape. */
export function errorPayload(type: string, message: string) {
  return { type: "error", error: { type, message } };
}

/** Rounds a duration for display: whole ms under 10 s, else tenths of a second. */
export function formatMs(ms: number | null): string {
  if (ms === null || !Number.isFinite(ms)) return "n/a";
  return ms < 10_000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/**
 * The plain-text stats line (`?stats=1`), after the answer:
 * `[sluice] ttft 612 ms · 18 in / 54 out tokens · $0.000576 · 1840 ms · 31 tok/s · end_turn · req_…`
 * (`unpriced` instead of the cost when the model has no price).
 */
export function statsLine(done: ChatDone): string {
  const parts = [
    `ttft ${formatMs(done.ttft_ms)}`,
    `${done.usage.input_tokens} in / ${done.usage.output_tokens} out tokens`,
    formatUsd(done.cost_usd),
    formatMs(done.total_ms),
  ];
  if (done.output_tokens_per_second !== null) {
    parts.push(`${Math.round(done.output_tokens_per_second)} tok/s`);
  }
  if (done.stop_reason) parts.push(done.stop_reason);
  parts.push(done.request_id);
  if (done.stored === false) parts.push("not stored: over the conversation's byte limit");
  return `[sluice] ${parts.join(" · ")}\n`;
}

/** A cost for display: dollars to the micro-dollar (`$0.000576`), or `unpriced`. */
export function formatUsd(usd: number | null): string {
  if (usd === null || !Number.isFinite(usd)) return "unpriced";
  return `$${(Math.round(usd * 1e6) / 1e6).toFixed(6)}`;
}

/** The plain-text error line, the answer's last line when it failed mid-stream. */
export function errorLine(type: string, message: string): string {
  return `[sluice error] ${type}: ${message}\n`;
}
