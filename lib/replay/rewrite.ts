/**
 * Changes replay makes to recorded bytes, touching nothing else: a cut at the request's
 * `max_tokens`, and the requested model's name.
 */
import type { Fixture } from "./fixtures.ts";
import { createBoundaryTracker, decodeAll } from "../stream/sse.ts";
import { splitEvents } from "./pace.ts";
import { isObject } from "./body.ts";
import { concatBytes } from "../bytes.ts";

const encoder = new TextEncoder();
const sse = (event: string, data: unknown) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;

/**
 * A complete recorded answer cut at `maxTokens` as the API cuts it: the content deltas up to
 * the budget (the recording's output tokens spread over its delta characters, the delta that
 * crosses the budget shortened), `content_block_stop`, then `message_delta` with
 * `stop_reason: "max_tokens"` and `output_tokens: maxTokens`, and `message_stop`. Undefined
 * when the answer fits, or is not a complete stream (errors and cuts are served as recorded).
 */
export function truncateAtMaxTokens(bytes: Uint8Array, maxTokens: number): Uint8Array | undefined {
  if (!Number.isFinite(maxTokens) || maxTokens < 1) return undefined;
  const segments = splitEvents(bytes).map((segment) => ({ segment, events: decodeAll(segment) }));
  const all = segments.flatMap((s) => s.events);
  if (!all.some((e) => e.event === "message_stop") || all.some((e) => e.event === "error")) {
    return undefined;
  }
  let outputTokens = 0;
  let totalChars = 0;
  for (const event of all) {
    const data = safeJson(event.data);
    if (event.event === "message_delta") {
      outputTokens = Number(data?.usage?.output_tokens) || outputTokens;
    }
    if (event.event === "content_block_delta") totalChars += deltaText(data?.delta).length;
  }
  if (outputTokens <= maxTokens || totalChars === 0) return undefined;
  let budget = Math.max(1, Math.floor((maxTokens / outputTokens) * totalChars));
  const out: Uint8Array[] = [];
  let open: { index: unknown; type: unknown } | undefined;
  for (const { segment, events } of segments) {
    const event = events[0];
    if (event?.event === "message_delta" || event?.event === "message_stop") break;
    const data = safeJson(event?.data ?? "");
    if (event?.event === "content_block_start") {
      open = { index: data?.index, type: data?.content_block?.type };
    }
    if (event?.event === "content_block_stop") open = undefined;
    if (event?.event !== "content_block_delta") {
      out.push(segment);
      continue;
    }
    const text = deltaText(data?.delta);
    if (text.length <= budget) {
      out.push(segment);
      budget -= text.length;
      continue;
    }
    // The delta that crosses the budget: keep its first `budget` characters, never half of a
    // surrogate pair.
    let end = budget;
    if (end > 0 && /[\uD800-\uDBFF]/.test(text[end - 1])) end--;
    const kept = text.slice(0, end);
    if (kept !== "") {
      const key = ["text", "thinking", "partial_json"].find((k) => k in data.delta)!;
      out.push(encoder.encode(sse("content_block_delta", {
        ...data,
        delta: { ...data.delta, [key]: kept },
      })));
    }
    break;
  }
  const tail = [];
  // The API ends a text or thinking block cut by max_tokens with content_block_stop, but not a
  // tool input (the `tool-max-tokens-no-stop` recording).
  if (open && !TOOL_INPUT_BLOCKS.has(String(open.type))) {
    tail.push(sse("content_block_stop", { type: "content_block_stop", index: open.index }));
  }
  tail.push(
    sse("message_delta", {
      type: "message_delta",
      delta: { stop_reason: "max_tokens", stop_sequence: null },
      usage: { output_tokens: maxTokens },
    }),
    sse("message_stop", { type: "message_stop" }),
  );
  out.push(encoder.encode(tail.join("")));
  return concatBytes(out);
}

const TOOL_INPUT_BLOCKS = new Set(["tool_use", "server_tool_use", "mcp_tool_use"]);

// deno-lint-ignore no-explicit-any
function safeJson(data: string): any {
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}

function deltaText(delta: unknown): string {
  if (!isObject(delta)) return "";
  const text = delta.text ?? delta.thinking ?? delta.partial_json;
  return typeof text === "string" ? text : "";
}

/** Bytes as Latin-1 text: one char per byte, for byte searches. */
export function latin1(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return text;
}

/**
 * `bytes` with the first `"model"` value (after `after`, when given) replaced by `model`,
 * every other byte unchanged; and where the change is and how many bytes it adds. Undefined
 * when there is no such field or it already says `model`.
 */
export function rewriteModel(
  bytes: Uint8Array,
  model: string,
  after = "",
): { bytes: Uint8Array; at: number; delta: number } | undefined {
  const text = latin1(bytes);
  const from = after ? text.indexOf(after) : 0;
  if (from < 0) return undefined;
  const pattern = /"model"\s*:\s*("(?:[^"\\]|\\.)*")/g;
  pattern.lastIndex = from;
  const match = pattern.exec(text);
  if (!match) return undefined;
  const replacement = encoder.encode(JSON.stringify(model));
  const start = match.index + match[0].length - match[1].length;
  const end = match.index + match[0].length;
  const old = bytes.subarray(start, end);
  if (old.length === replacement.length && old.every((b, i) => b === replacement[i])) {
    return undefined;
  }
  return {
    bytes: concatBytes([bytes.subarray(0, start), replacement, bytes.subarray(end)]),
    at: start,
    delta: replacement.length - old.length,
  };
}

/** A stream's fixture with its `message_start` naming `model`; recorded timing kept in step. */
/** `fixture` with `model` in its `message_start` (timing moved with the bytes). */
export function withModel(fixture: Fixture, model: string): Fixture {
  if (!fixture.sse) return fixture;
  const changed = rewriteModel(fixture.sse, model, '"message_start"');
  if (!changed) return fixture;
  let timing = fixture.timing;
  if (timing) {
    // The recorded chunk holding the model grows or shrinks by the difference.
    let offset = 0;
    timing = timing.map((chunk) => {
      const holds = changed.at >= offset && changed.at < offset + chunk.bytes;
      offset += chunk.bytes;
      return holds ? { ...chunk, bytes: chunk.bytes + changed.delta } : chunk;
    });
  }
  return { ...fixture, sse: changed.bytes, timing };
}

/** Whether SSE bytes end inside an event: a recording of a connection cut mid-event. */
export function endsInsideEvent(bytes: Uint8Array): boolean {
  const tracker = createBoundaryTracker();
  tracker.see(bytes);
  return !tracker.atBoundary();
}
