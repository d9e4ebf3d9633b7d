/**
 * The event accumulator: folds the decoded SSE events of one Messages API stream into the final
 * `Message`, and measures the stream while doing it.
 *
 * It mirrors `MessageStream#accumulateMessage` of `@anthropic-ai/sdk` 1.14.0 (the SDK's
 * accumulation rules: a `message_start` gives the snapshot; `content_block_start` appends a
 * block; deltas append text, thinking, signatures, citations and tool input, the last parsed as
 * partial JSON; `message_delta` sets the stop reason and replaces the usage fields it carries),
 * so that at the end of a stream its snapshot equals
 * the SDK's `finalMessage()` for the same bytes. The deliberate differences, each listed in
 * docs/accumulator.md: a `message_delta` without `usage` is applied instead of crashing; the snapshot of a
 * stream that ends without `message_stop` is kept (as the Python SDK does) and flagged
 * `incomplete`; and the SDK-only `parsed_output` field is not added.
 *
 * It is incremental (one event at a time) and pure: no I/O, time from an injected clock.
 * Mutation is in place, so the cost of an event never grows with the length of the stream;
 * a tool's partial JSON is parsed once, when its block stops (or when the stream ends).
 */
import type { ContentBlock, Message } from "@anthropic-ai/sdk/resources/messages";
import { partialParse } from "@anthropic-ai/sdk/_vendor/partial-json-parser/parser";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { SseEvent } from "./sse.ts";

export type { ContentBlock, Message };

/** An error that ended a stream: an SSE `error` event, or bytes the accumulator could not use. */
export interface StreamError {
  type: string;
  message: string;
}

/** Callbacks named after the SDK's `MessageStream` events (the tutorial's helpers). */
export interface AccumulatorObserver {
  /** A `text_delta` reached a text block: the delta and the block's text so far. */
  onText?(delta: string, snapshot: string): void;
  /** Any Messages event (not `ping`, not `error`), with the snapshot after applying it. */
  onStreamEvent?(event: StreamEvent, snapshot: Message): void;
  /** A content block finished (`content_block_stop`). */
  onContentBlock?(block: ContentBlock): void;
  /** `message_stop`: the message is complete. */
  onMessage?(message: Message): void;
  /** The stream errored (an `error` event, or an event that could not be used). */
  onError?(error: StreamError): void;
  /** The stream is over, however it ended. Always the last call. */
  onEnd?(result: StreamResult): void;
}

/** A parsed Messages stream event (the JSON `data` of one SSE event). */
export interface StreamEvent {
  type: string;
  [key: string]: unknown;
}

/** Per-stream measurements, in milliseconds from the stream's start. */
export interface StreamMetrics {
  /** Time from start to the first `content_block_delta` (time to first token). */
  ttftMs: number | null;
  /** Time from start to the end of the stream. */
  totalMs: number | null;
  /** Output tokens per second, counted from the first content delta to the end. */
  outputTokensPerSecond: number | null;
}

/** What one stream amounted to. */
export interface StreamResult {
  /** The accumulated message: final when `complete`, otherwise the partial snapshot (or null). */
  message: Message | null;
  /** True once `message_stop` was seen. */
  complete: boolean;
  /** True when the stream ended without `message_stop` (cut, truncated, or errored). */
  incomplete: boolean;
  /** The error that ended the stream, if any. */
  error: StreamError | null;
  /** Count of events by SSE event name (`ping` and `error` included). */
  events: Record<string, number>;
  /** Count of content deltas by delta type. */
  deltas: Record<string, number>;
  /** Events or deltas of a type sluice does not know, ignored as the API's versioning asks. */
  unknown: number;
  metrics: StreamMetrics;
}

/** Options for {@link EventAccumulator}. */
export interface AccumulatorOptions {
  /** Where time comes from. */
  clock?: Clock;
  /** When the stream started (request arrival); defaults to `clock.now()` at construction. */
  startedAt?: number;
  observer?: AccumulatorObserver;
}

const KNOWN_EVENTS = new Set([
  "message_start",
  "message_delta",
  "message_stop",
  "content_block_start",
  "content_block_delta",
  "content_block_stop",
  "ping",
  "error",
]);
const KNOWN_DELTAS = new Set([
  "text_delta",
  "citations_delta",
  "input_json_delta",
  "thinking_delta",
  "signature_delta",
]);
const TOOL_INPUT_BLOCKS = new Set(["tool_use", "server_tool_use", "mcp_tool_use"]);

// Internal, loosely typed views of the wire objects: the accumulator copies unknown fields
// through untouched, so it cannot rely on the SDK's closed unions.
type Block = { type: string; [key: string]: unknown };
type Snapshot = {
  content: Block[];
  usage?: Record<string, unknown>;
  [key: string]: unknown;
};

/**
 * Accumulates one stream. Feed it decoded SSE events with {@link push}, then call {@link end}.
 *
 * @example The final message of a short stream
 * ```ts
 * import assert from "node:assert/strict";
 * import { EventAccumulator } from "./accumulator.ts";
 * import { decodeAll } from "./sse.ts";
 *
 * const sse = [
 *   'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-5-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}\n\n',
 *   'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
 *   'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}\n\n',
 *   'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
 *   'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}\n\n',
 *   'event: message_stop\ndata: {"type":"message_stop"}\n\n',
 * ].join("");
 * const accumulator = new EventAccumulator();
 * for (const event of decodeAll(new TextEncoder().encode(sse))) accumulator.push(event);
 * const result = accumulator.end();
 * assert.equal(result.complete, true);
 * assert.deepEqual(result.message?.content, [{ type: "text", text: "Hello" }]);
 * assert.equal(result.message?.usage?.output_tokens, 2);
 * ```
 */
export class EventAccumulator {
  #clock: Clock;
  #startedAt: number;
  #observer: AccumulatorObserver;
  #snapshot: Snapshot | undefined;
  // Tool-input JSON text per content index, for blocks whose input is still streaming.
  #jsonBuffers = new Map<number, Appender>();
  // The text (or thinking) being appended to, per content index.
  #appenders: (Appender | undefined)[] = [];
  #complete = false;
  #error: StreamError | null = null;
  #ended = false;
  #result: StreamResult | undefined;
  // Maps, not records: a record keyed by event name is a megamorphic store on every event (the
  // profile in docs/performance.md); they become records once, in end().
  #events = new Map<string, number>();
  #deltas = new Map<string, number>();
  #unknown = 0;
  #firstDeltaAt: number | null = null;
  // Text blocks whose `citations` array this accumulator created (and so may append to).
  #ownCitations = new WeakSet<Block>();

  constructor(options: AccumulatorOptions = {}) {
    this.#clock = options.clock ?? systemClock;
    this.#startedAt = options.startedAt ?? this.#clock.now();
    this.#observer = options.observer ?? {};
  }

  /** The message so far (the live object; do not mutate it). */
  get snapshot(): Message | undefined {
    return this.#snapshot as unknown as Message | undefined;
  }

  /** The error that ended the stream, if any. */
  get error(): StreamError | null {
    return this.#error;
  }

  /** When the first content delta arrived, on the injected clock. */
  get firstDeltaAt(): number | null {
    return this.#firstDeltaAt;
  }

  /** Applies one decoded SSE event. Never throws on bad input: the stream is marked errored. */
  push(sse: SseEvent): void {
    if (this.#ended) return;
    const name = sse.event;
    if (name === undefined) {
      // The SDK skips events with no `event:` line; so do we, but they are counted.
      this.#count("(unnamed)");
      return;
    }
    this.#count(name);
    const knownName = KNOWN_EVENTS.has(name);
    if (!knownName) this.#unknown++;
    if (this.#error) return; // after an error, bytes may still flow; they change nothing
    if (name === "ping") return;
    if (name === "error") {
      this.#fail(parseErrorEvent(sse.data));
      return;
    }
    if (sse.data === "") return;
    let event: StreamEvent;
    try {
      event = (name === "content_block_delta" ? parseDeltaEvent(sse.data) : undefined) ??
        JSON.parse(sse.data);
    } catch (cause) {
      this.#fail({
        type: "invalid_event",
        message: `could not parse the data of a "${name}" event as JSON: ${
          (cause as Error).message
        }`,
      });
      return;
    }
    if (event === null || typeof event !== "object" || typeof event.type !== "string") {
      this.#unknown++;
      return;
    }
    this.#apply(event, knownName);
  }

  /** Ends the stream and returns its result. Calling it again returns the same result. */
  end(): StreamResult {
    if (this.#result) return this.#result;
    this.#ended = true;
    const endedAt = this.#clock.now();
    // A tool block that never got its content_block_stop (max_tokens, a cut connection): give it
    // the best-effort partial parse of what arrived, as the SDK's lazy getter would.
    for (const index of [...this.#jsonBuffers.keys()]) this.#freezeInput(index, true);
    const message = this.#snapshot as unknown as Message | undefined;
    const outputTokens = numberOr(this.#snapshot?.usage?.output_tokens, null);
    const generationMs = this.#firstDeltaAt === null ? null : endedAt - this.#firstDeltaAt;
    this.#result = {
      message: message ?? null,
      complete: this.#complete,
      incomplete: !this.#complete,
      error: this.#error,
      events: Object.fromEntries(this.#events),
      deltas: Object.fromEntries(this.#deltas),
      unknown: this.#unknown,
      metrics: {
        ttftMs: this.#firstDeltaAt === null ? null : this.#firstDeltaAt - this.#startedAt,
        totalMs: endedAt - this.#startedAt,
        outputTokensPerSecond: outputTokens !== null && generationMs !== null && generationMs > 0
          ? outputTokens / (generationMs / 1000)
          : null,
      },
    };
    this.#observer.onEnd?.(this.#result);
    return this.#result;
  }

  #count(name: string) {
    this.#events.set(name, (this.#events.get(name) ?? 0) + 1);
  }

  #fail(error: StreamError) {
    this.#error = error;
    this.#observer.onError?.(error);
  }

  #apply(event: StreamEvent, knownName: boolean) {
    const snapshot = this.#snapshot;
    if (event.type === "message_start") {
      if (snapshot) {
        this.#fail({
          type: "invalid_event",
          message: 'Unexpected event order, got message_start before receiving "message_stop"',
        });
        return;
      }
      const message = event.message as Snapshot | undefined;
      if (!message || typeof message !== "object" || !Array.isArray(message.content)) {
        this.#fail({ type: "invalid_event", message: "message_start without a message" });
        return;
      }
      this.#snapshot = message;
      this.#observer.onStreamEvent?.(event, this.snapshot!);
      return;
    }
    // Like SDK 1.14.0: events before message_start change nothing.
    if (!snapshot) return;

    switch (event.type) {
      case "content_block_start": {
        const block = event.content_block as Block | undefined;
        if (block && typeof block === "object") snapshot.content.push({ ...block });
        break;
      }
      case "content_block_delta":
        this.#applyDelta(snapshot, event);
        break;
      case "content_block_stop": {
        const index = event.index as number;
        this.#freezeInput(index, false);
        if (this.#error) return;
        break;
      }
      case "message_delta":
        applyMessageDelta(snapshot, event);
        break;
      case "message_stop":
        this.#complete = true;
        break;
      default:
        // Counted once: an unknown event name was counted in push().
        if (knownName) this.#unknown++;
        break;
    }

    this.#observer.onStreamEvent?.(event, this.snapshot!);
    if (event.type === "content_block_stop") {
      const last = snapshot.content.at(-1);
      if (last) this.#observer.onContentBlock?.(last as unknown as ContentBlock);
    } else if (event.type === "message_stop") {
      this.#observer.onMessage?.(this.snapshot!);
    }
  }

  #applyDelta(snapshot: Snapshot, event: StreamEvent) {
    if (this.#firstDeltaAt === null) this.#firstDeltaAt = this.#clock.now();
    const delta = event.delta as Record<string, unknown> | undefined;
    const deltaType = typeof delta?.type === "string" ? delta.type : "(none)";
    this.#deltas.set(deltaType, (this.#deltas.get(deltaType) ?? 0) + 1);
    if (!delta || !KNOWN_DELTAS.has(deltaType)) {
      this.#unknown++;
      return;
    }
    const index = event.index as number;
    const block = snapshot.content.at(index);
    switch (deltaType) {
      case "text_delta": {
        const text = String(delta.text ?? "");
        if (block?.type === "text") block.text = this.#append(index, block, "text", text);
        // The SDK reports text against the last block, whatever the delta's index.
        const last = snapshot.content.at(-1);
        if (last?.type === "text") this.#observer.onText?.(text, (last.text as string) || "");
        break;
      }
      case "citations_delta":
        if (block?.type === "text") {
          // Appended in place: copying the array on each delta made the cost grow with the
          // stream. A fresh array the first time, so the content_block_start's is not shared.
          if (Array.isArray(block.citations) && this.#ownCitations.has(block)) {
            (block.citations as unknown[]).push(delta.citation);
          } else {
            const citations = (block.citations as unknown[] | null | undefined) ?? [];
            block.citations = [...citations, delta.citation];
            this.#ownCitations.add(block);
          }
        }
        break;
      case "input_json_delta":
        if (block && TOOL_INPUT_BLOCKS.has(block.type)) {
          let buffer = this.#jsonBuffers.get(index);
          if (buffer === undefined) {
            // The SDK rebuilds the block with `input` as its last key; keep the same order.
            delete block.input;
            block.input = {};
            buffer = new Appender("");
            this.#jsonBuffers.set(index, buffer);
          }
          buffer.append(String(delta.partial_json ?? ""));
        }
        break;
      case "thinking_delta":
        if (block?.type === "thinking") {
          block.thinking = this.#append(index, block, "thinking", String(delta.thinking ?? ""));
        }
        break;
      case "signature_delta":
        // Replaces, never appends: the signature arrives whole just before content_block_stop.
        if (block?.type === "thinking") block.signature = delta.signature;
        break;
    }
  }

  /** Appends a delta to a block's `text` or `thinking`; returns the new value. */
  #append(index: number, block: Block, key: "text" | "thinking", piece: string): string {
    let appender = this.#appenders[index];
    if (appender?.block !== block) {
      appender = new Appender(String(block[key] ?? ""), block);
      this.#appenders[index] = appender;
    }
    return appender.append(piece);
  }

  /** Parses a tool block's buffered JSON into `input`. `partial` allows a cut-off buffer. */
  #freezeInput(index: number, partial: boolean) {
    const buffer = this.#jsonBuffers.get(index)?.value();
    if (buffer === undefined) return;
    this.#jsonBuffers.delete(index);
    const block = this.#snapshot?.content.at(index);
    if (!block) return;
    if (!buffer) return; // only "" arrived: input stays {}
    try {
      block.input = parseToolInput(buffer);
    } catch (cause) {
      if (partial) return; // best effort only: a cut-off buffer that will not parse stays {}
      this.#fail({
        type: "invalid_tool_input",
        message: `could not parse the tool input JSON of block ${index}: ${
          (cause as Error).message
        }`,
      });
    }
  }
}

/**
 * Builds a string from many small pieces, as `+=` would, while keeping little of it alive.
 *
 * `+=` alone keeps one rope node per delta, and each piece may be a slice that holds its whole
 * event's text: on a 100k-delta stream that is megabytes the garbage collector copies on every
 * scavenge, so the cost per event grew with the stream (issue 6). Here the recent pieces are
 * flattened into one chunk every {@link CHUNK_PIECES} appends (the pieces and their events then
 * die young), and the chunks themselves are flattened when their count doubles: amortised O(1)
 * per append, and O(log n) live rope nodes. No library builds strings; V8 has no public flatten,
 * so `| 0` (ToNumber, which flattens its operand) does it.
 */
class Appender {
  #head: string;
  #tail = "";
  #pieces = 0;
  #chunks = 0;
  #flattenAt = 8;

  constructor(initial: string, readonly block?: Block) {
    this.#head = initial;
  }

  /** Appends a piece; returns the whole string so far. */
  append(piece: string): string {
    this.#tail += piece;
    if (++this.#pieces === CHUNK_PIECES) {
      this.#pieces = 0;
      (this.#tail as unknown as number) | 0;
      this.#head += this.#tail;
      this.#tail = "";
      if (++this.#chunks === this.#flattenAt) {
        this.#flattenAt *= 2;
        (this.#head as unknown as number) | 0;
      }
      return this.#head;
    }
    return this.#head + this.#tail;
  }

  /** The whole string so far. */
  value(): string {
    return this.#head + this.#tail;
  }
}

/** How many appended pieces are flattened into one chunk. */
const CHUNK_PIECES = 64;

/**
 * Parses a tool's input JSON as the SDK does (`partialParse`), faster. For complete JSON whose
 * value is not a bare number, `partialParse` re-tokenises the text and hands it back to
 * `JSON.parse` unchanged, so `JSON.parse` alone gives the same value in a fraction of the time
 * (the profile in docs/performance.md: `partialParse` was 90% of a 5,000-chunk tool stream). A bare
 * number, or anything `JSON.parse` refuses, takes the SDK's path.
 */
function parseToolInput(buffer: string): unknown {
  try {
    const value = JSON.parse(buffer);
    if (typeof value !== "number") return value;
  } catch {
    // a cut-off or repaired input: the SDK's parser decides
  }
  return partialParse(buffer);
}

const DELTA_HEAD = '{"type":"content_block_delta","index":';
const TEXT_MIDDLE = ',"delta":{"type":"text_delta","text":"';
const JSON_MIDDLE = ',"delta":{"type":"input_json_delta","partial_json":"';
const DELTA_TAIL = '"}}';

/**
 * A fast path for the events that make up most of a stream, `text_delta` and `input_json_delta`
 * exactly as the API writes them:
 * `{"type":"content_block_delta","index":N,"delta":{"type":"text_delta","text":"…"}}`.
 * Only the string is parsed (not at all when it has no escapes). Returns the object `JSON.parse`
 * would build (same keys, same order), or undefined for anything else, which then goes to
 * `JSON.parse`. Hand-written because `JSON.parse` was the largest cost per event in the profile
 * (see docs/performance.md).
 */
export function parseDeltaEvent(data: string): StreamEvent | undefined {
  if (!data.startsWith(DELTA_HEAD)) return undefined;
  const digits = DELTA_HEAD.length;
  let i = digits;
  let index = 0;
  for (; i < data.length && i < digits + 9; i++) {
    const c = data.charCodeAt(i);
    if (c < 48 || c > 57) break;
    index = index * 10 + (c - 48);
  }
  // JSON numbers: at least one digit, no leading zero.
  if (i === digits || (i > digits + 1 && data.charCodeAt(digits) === 48)) return undefined;
  let isText: boolean;
  if (data.startsWith(TEXT_MIDDLE, i)) isText = true;
  else if (data.startsWith(JSON_MIDDLE, i)) isText = false;
  else return undefined;
  const start = i + (isText ? TEXT_MIDDLE : JSON_MIDDLE).length;
  const end = data.length - DELTA_TAIL.length;
  if (end < start || !data.endsWith(DELTA_TAIL)) return undefined;
  let value = data.slice(start, end);
  for (let j = start; j < end; j++) {
    const c = data.charCodeAt(j);
    // A quote, a backslash (an escape) or a control character: the string needs JSON's rules.
    // Parsing it as a whole JSON text also proves it is one string (an unescaped quote inside
    // would leave trailing characters, which JSON.parse refuses).
    if (c === 34 || c === 92 || c < 32) {
      try {
        value = JSON.parse(data.slice(start - 1, end + 1)); // the string with its quotes
      } catch {
        return undefined; // not valid: JSON.parse of the whole event reports it
      }
      break;
    }
  }
  return {
    type: "content_block_delta",
    index,
    delta: isText
      ? { type: "text_delta", text: value }
      : { type: "input_json_delta", partial_json: value },
  };
}

/** Applies a `message_delta` with the SDK's rules: usage counters are cumulative, overwrite. */
function applyMessageDelta(snapshot: Snapshot, event: StreamEvent) {
  const delta = (event.delta ?? {}) as Record<string, unknown>;
  snapshot.stop_reason = delta.stop_reason;
  snapshot.stop_sequence = delta.stop_sequence;
  snapshot.stop_details = delta.stop_details;
  if (delta.container != null) snapshot.container = delta.container;
  const usage = event.usage as Record<string, unknown> | undefined;
  if (!usage || typeof usage !== "object") return; // the SDK throws here; see docs/performance.md
  snapshot.usage ??= {};
  snapshot.usage.output_tokens = usage.output_tokens;
  for (
    const key of [
      "input_tokens",
      "cache_creation_input_tokens",
      "cache_read_input_tokens",
      "server_tool_use",
      "output_tokens_details",
    ]
  ) {
    if (usage[key] != null) snapshot.usage[key] = usage[key];
  }
}

/** Reads an SSE `error` event's data: `{"type":"error","error":{"type","message"}}`. */
function parseErrorEvent(data: string): StreamError {
  try {
    const body = JSON.parse(data);
    const error = body?.error;
    if (error && typeof error === "object") {
      return {
        type: typeof error.type === "string" ? error.type : "api_error",
        message: typeof error.message === "string" ? error.message : JSON.stringify(body),
      };
    }
    return { type: "api_error", message: typeof body === "string" ? body : JSON.stringify(body) };
  } catch {
    return { type: "api_error", message: data };
  }
}

function numberOr<T>(value: unknown, fallback: T): number | T {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}
