/**
 * Benchmark support: synthetic Messages streams of any length, and the three ways of consuming
 * them that the benchmarks compare (sluice, the official SDK's `MessageStream`, and the floor:
 * `eventsource-parser` plus `JSON.parse` of each event and nothing else).
 *
 * Streams are generated rather than recorded so their length is a parameter: the same shape at
 * 100 and at 100,000 deltas shows whether the cost of an event grows with the stream.
 */
import Anthropic from "@anthropic-ai/sdk";
import { createParser } from "eventsource-parser";
import { EventAccumulator, type StreamResult } from "../lib/stream/accumulator.ts";
import { createSseDecoder } from "../lib/stream/sse.ts";
import { tapStream } from "../lib/stream/tap.ts";

const encoder = new TextEncoder();

/** A generated stream: its bytes split as the API writes them (one chunk per event). */
export interface BenchStream {
  name: string;
  chunks: Uint8Array[];
  /** SSE events in the stream. */
  events: number;
  bytes: number;
}

/** One SSE event as the Messages API writes it. */
export function sse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** A `message_start` event for an empty assistant message. */
export function messageStart(id: string): string {
  return sse("message_start", {
    type: "message_start",
    message: {
      id,
      type: "message",
      role: "assistant",
      model: "claude-sonnet-5-5",
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage: {
        input_tokens: 1184,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        output_tokens: 2,
        service_tier: "standard",
      },
    },
  });
}

/** The closing `message_delta` and `message_stop` events. */
export function messageEnd(outputTokens: number, stopReason: string): string[] {
  return [
    sse("message_delta", {
      type: "message_delta",
      delta: { stop_reason: stopReason, stop_sequence: null },
      usage: { output_tokens: outputTokens },
    }),
    sse("message_stop", { type: "message_stop" }),
  ];
}

const WORDS = [
  " the",
  " garden",
  " rules",
  " say",
  " plots",
  " must",
  " be",
  " cleared",
  " of dead",
  " plants,",
  " stakes",
  " and",
  " hoses by",
  " November",
  " 15th —",
  " naïve",
  " café",
  " owners",
  " 🌱",
  ".\n\n",
];

/** A text answer of `deltas` text deltas of a few words each (with some multi-byte text). */
export function textStream(deltas: number): BenchStream {
  const parts = [
    messageStart(`msg_bench_text_${deltas}`),
    sse("content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "text", text: "" },
    }),
    sse("ping", { type: "ping" }),
  ];
  for (let i = 0; i < deltas; i++) {
    const text = WORDS[i % WORDS.length] + WORDS[(i * 7 + 3) % WORDS.length];
    parts.push(sse("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "text_delta", text },
    }));
  }
  parts.push(sse("content_block_stop", { type: "content_block_stop", index: 0 }));
  parts.push(...messageEnd(deltas * 3, "end_turn"));
  return finish(`text, ${deltas} deltas`, parts);
}

/**
 * A tool call whose input arrives in `deltas` `input_json_delta` chunks (an object with an array
 * of records, cut at arbitrary character offsets as the API does).
 */
export function toolStream(deltas: number): BenchStream {
  const records = [];
  for (let i = 0; records.length < deltas; i++) {
    records.push({ id: i, name: `row ${i}`, tags: ["a", "b"], ok: i % 3 === 0, score: i / 7 });
  }
  const json = JSON.stringify({ rows: records });
  const size = Math.max(1, Math.floor(json.length / deltas));
  const parts = [
    messageStart(`msg_bench_tool_${deltas}`),
    sse("content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "tool_use", id: "toolu_bench", name: "save_rows", input: {} },
    }),
  ];
  for (let i = 0; i < deltas; i++) {
    const end = i === deltas - 1 ? json.length : (i + 1) * size;
    parts.push(sse("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "input_json_delta", partial_json: json.slice(i * size, end) },
    }));
  }
  parts.push(sse("content_block_stop", { type: "content_block_stop", index: 0 }));
  parts.push(...messageEnd(deltas, "tool_use"));
  return finish(`tool input, ${deltas} input_json_delta chunks`, parts);
}

function finish(name: string, parts: string[]): BenchStream {
  const chunks = parts.map((part) => encoder.encode(part));
  return {
    name,
    chunks,
    events: parts.length,
    bytes: chunks.reduce((sum, chunk) => sum + chunk.length, 0),
  };
}

/** The streams the accumulator benchmark runs, by bench group (shared with the report). */
export function accumulatorStreams(): Record<string, BenchStream> {
  return {
    text: textStream(10_000),
    tool: toolStream(5_000),
    short: textStream(100),
    long: textStream(100_000),
  };
}

/** A ReadableStream over chunks, as a fetch body would deliver them. */
export function bodyOf(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]);
      else controller.close();
    },
  }, { highWaterMark: 0 });
}

/** sluice: decoder plus accumulator, fed synchronously (its cost and nothing else). */
export function runSluice(chunks: Uint8Array[]): StreamResult {
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((event) => accumulator.push(event));
  for (let i = 0; i < chunks.length; i++) decoder.feed(chunks[i]);
  decoder.end();
  return accumulator.end();
}

/**
 * sluice as the gateway runs it: the body read through `tapStream` (bytes forwarded to a
 * reader first), decoded and accumulated in the tap's hooks. Comparable with the SDK, which
 * also reads a stream.
 */
export async function runSluiceTapped(chunks: Uint8Array[]): Promise<StreamResult> {
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((event) => accumulator.push(event));
  let result: StreamResult | undefined;
  const tapped = tapStream(bodyOf(chunks), {
    onChunk: (chunk) => decoder.feed(chunk),
    onClose: () => {
      decoder.end();
      result = accumulator.end();
    },
    onCancel: () => {},
    onError: () => undefined,
  });
  const reader = tapped.getReader();
  while (!(await reader.read()).done) { /* drain, as the client would */ }
  if (!result) throw new Error("the tapped stream did not close");
  return result;
}

/** The floor: streaming UTF-8 decoding, `eventsource-parser`, `JSON.parse` of each event. */
export function runFloor(chunks: Uint8Array[]): number {
  const text = new TextDecoder();
  let parsed = 0;
  const parser = createParser({
    onEvent(event) {
      JSON.parse(event.data);
      parsed++;
    },
  });
  for (let i = 0; i < chunks.length; i++) parser.feed(text.decode(chunks[i], { stream: true }));
  parser.feed(text.decode());
  return parsed;
}

/** The official SDK: `client.messages.stream()` on the same bytes through a fake fetch. */
export async function runSdk(chunks: Uint8Array[]): Promise<unknown> {
  const client = new Anthropic({
    apiKey: "bench",
    maxRetries: 0,
    logLevel: "off",
    fetch: () =>
      Promise.resolve(
        new Response(bodyOf(chunks), { headers: { "content-type": "text/event-stream" } }),
      ),
  });
  const stream = client.messages.stream({ model: "m", max_tokens: 1, messages: [] });
  return await stream.finalMessage();
}

/** The `p`th percentile (0..100) of `values`, nearest rank; NaN when empty. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

/** Renders rows as a GitHub markdown table (also readable in a terminal). */
export function markdownTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    "| " + cells.map((c, i) => (c ?? "").padEnd(widths[i])).join(" | ") + " |";
  return [
    line(header),
    "|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|",
    ...rows.map(line),
  ]
    .join("\n");
}
