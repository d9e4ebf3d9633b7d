import assert from "node:assert/strict";
import { EventAccumulator, type StreamResult } from "../lib/stream/accumulator.ts";
import { manualClock } from "../lib/clock.ts";
import { createSseDecoder, type SseEvent } from "../lib/stream/sse.ts";
import { sdkOracle } from "./helpers.ts";

const ev = (event: string, data: unknown): SseEvent => ({
  event,
  data: typeof data === "string" ? data : JSON.stringify(data),
});

const start = (usage: Record<string, unknown> = { input_tokens: 10, output_tokens: 1 }) =>
  ev("message_start", {
    type: "message_start",
    message: {
      id: "msg_1",
      type: "message",
      role: "assistant",
      model: "m",
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage,
    },
  });
const textStart = (index = 0) =>
  ev("content_block_start", {
    type: "content_block_start",
    index,
    content_block: { type: "text", text: "" },
  });
const text = (t: string, index = 0) =>
  ev("content_block_delta", {
    type: "content_block_delta",
    index,
    delta: { type: "text_delta", text: t },
  });
const stop = (index = 0) => ev("content_block_stop", { type: "content_block_stop", index });
const messageDelta = (usage: Record<string, unknown>, stop_reason = "end_turn") =>
  ev("message_delta", {
    type: "message_delta",
    delta: { stop_reason, stop_sequence: null },
    usage,
  });
const messageStop = ev("message_stop", { type: "message_stop" });
const ping = ev("ping", { type: "ping" });

function run(events: SseEvent[], accumulator = new EventAccumulator()): StreamResult {
  for (const e of events) accumulator.push(e);
  return accumulator.end();
}

Deno.test("pings are counted and change nothing", () => {
  const result = run([
    start(),
    ping,
    textStart(),
    ping,
    text("hi"),
    stop(),
    messageDelta({ output_tokens: 2 }),
    messageStop,
  ]);
  assert.equal(result.events.ping, 2);
  assert.equal(result.error, null);
  assert.equal(result.complete, true);
  assert.deepEqual(result.message?.content, [{ type: "text", text: "hi" }]);
});

Deno.test("an error event is captured with its type and message, and the partial message is kept", () => {
  const errors: unknown[] = [];
  const accumulator = new EventAccumulator({ observer: { onError: (e) => errors.push(e) } });
  const result = run([
    start(),
    textStart(),
    text("par"),
    ev("error", { type: "error", error: { type: "overloaded_error", message: "Overloaded" } }),
    text("ignored"),
  ], accumulator);
  assert.deepEqual(result.error, { type: "overloaded_error", message: "Overloaded" });
  assert.deepEqual(errors, [result.error]);
  assert.equal(result.incomplete, true);
  assert.deepEqual(result.message?.content, [{ type: "text", text: "par" }]);
  assert.equal(result.events.error, 1);
});

Deno.test("unknown event and delta types are counted and ignored", () => {
  const result = run([
    start(),
    ev("future_event_type", { type: "future_event_type", payload: {} }),
    textStart(),
    ev("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "future_delta" },
    }),
    text("ok"),
    stop(),
    messageDelta({ output_tokens: 3 }),
    messageStop,
  ]);
  assert.equal(result.unknown, 2);
  assert.equal(result.events.future_event_type, 1);
  assert.equal(result.deltas.future_delta, 1);
  assert.equal(result.complete, true);
  assert.deepEqual(result.message?.content, [{ type: "text", text: "ok" }]);
});

Deno.test("message_delta usage overwrites, never adds, and keeps fields only message_start carries", () => {
  const result = run([
    start({
      input_tokens: 5,
      output_tokens: 1,
      service_tier: "standard",
      cache_creation: { a: 0 },
    }),
    messageDelta({ output_tokens: 2 }),
    messageDelta({ output_tokens: 7, input_tokens: 9, cache_read_input_tokens: null }),
    messageStop,
  ]);
  assert.deepEqual(result.message?.usage, {
    input_tokens: 9,
    output_tokens: 7,
    service_tier: "standard",
    cache_creation: { a: 0 },
  });
});

Deno.test("a stream without message_stop is incomplete and its tool input is the best-effort partial parse", () => {
  const result = run([
    start(),
    ev("content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "tool_use", id: "t", name: "f", input: {} },
    }),
    ev("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "input_json_delta", partial_json: '{"city": "Paris", "days": [1, 2' },
    }),
  ]);
  assert.equal(result.incomplete, true);
  assert.equal(result.complete, false);
  assert.equal(result.error, null);
  assert.deepEqual(result.message?.content, [
    { type: "tool_use", id: "t", name: "f", input: { city: "Paris", days: [1] } },
  ]);
});

Deno.test("tool input that is not JSON at content_block_stop errors the stream, as the SDK does", () => {
  const result = run([
    start(),
    ev("content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "tool_use", id: "t", name: "f", input: {} },
    }),
    ev("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "input_json_delta", partial_json: '{"re": "\\d"}' },
    }),
    stop(),
  ]);
  assert.equal(result.error?.type, "invalid_tool_input");
});

Deno.test("data that is not JSON errors the stream instead of throwing", () => {
  const result = run([start(), ev("content_block_delta", "{not json")]);
  assert.equal(result.error?.type, "invalid_event");
  assert.equal(result.incomplete, true);
});

Deno.test("observers are called like the SDK's helpers, and onEnd comes last", () => {
  const calls: string[] = [];
  const accumulator = new EventAccumulator({
    observer: {
      onText: (delta, snapshot) => calls.push(`text:${delta}:${snapshot}`),
      onStreamEvent: (event) => calls.push(`event:${event.type}`),
      onContentBlock: (block) => calls.push(`block:${block.type}`),
      onMessage: (message) => calls.push(`message:${message.id}`),
      onEnd: (result) => calls.push(`end:${result.complete}`),
    },
  });
  run([
    start(),
    textStart(),
    text("a"),
    text("b"),
    stop(),
    messageDelta({ output_tokens: 2 }),
    messageStop,
  ], accumulator);
  assert.deepEqual(calls, [
    "event:message_start",
    "event:content_block_start",
    "text:a:a",
    "event:content_block_delta",
    "text:b:ab",
    "event:content_block_delta",
    "event:content_block_stop",
    "block:text",
    "event:message_delta",
    "event:message_stop",
    "message:msg_1",
    "end:true",
  ]);
});

Deno.test("metrics come from the injected clock: TTFT, total time and output tokens per second", () => {
  const clock = manualClock(1_000);
  const accumulator = new EventAccumulator({ clock, startedAt: 1_000 });
  clock.advance(300);
  accumulator.push(start());
  accumulator.push(textStart());
  clock.advance(200);
  accumulator.push(text("first"));
  clock.advance(2_000);
  accumulator.push(text("second"));
  accumulator.push(stop());
  accumulator.push(messageDelta({ output_tokens: 100 }));
  accumulator.push(messageStop);
  const result = accumulator.end();
  assert.equal(result.metrics.ttftMs, 500);
  assert.equal(result.metrics.totalMs, 2_500);
  assert.equal(result.metrics.outputTokensPerSecond, 50);
});

Deno.test("a stream with no content delta has no TTFT", () => {
  const result = run([start(), messageDelta({ output_tokens: 1 }), messageStop]);
  assert.equal(result.metrics.ttftMs, null);
  assert.equal(result.metrics.outputTokensPerSecond, null);
});

Deno.test("a stream with no usage anywhere accumulates where the SDK throws", async () => {
  // The docs' thinking transcript has this shape: message_start and message_delta without usage.
  const events = [
    ev("message_start", {
      type: "message_start",
      message: {
        id: "msg_no_usage",
        type: "message",
        role: "assistant",
        model: "m",
        content: [],
        stop_reason: null,
        stop_sequence: null,
      },
    }),
    textStart(),
    text("Hello"),
    stop(),
    ev("message_delta", {
      type: "message_delta",
      delta: { stop_reason: "end_turn", stop_sequence: null },
    }),
    ev("message_stop", { type: "message_stop" }),
  ];
  const bytes = new TextEncoder().encode(
    events.map((e) => `event: ${e.event}\ndata: ${e.data}\n\n`).join(""),
  );
  const sdk = await sdkOracle([bytes]);
  assert.match(sdk.error?.message ?? "", /output_tokens|usage/, "the SDK is expected to fail here");
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((e) => accumulator.push(e));
  decoder.feed(bytes);
  decoder.end();
  const result = accumulator.end();
  assert.equal(result.error, null);
  assert.equal(result.complete, true);
  assert.deepEqual(
    JSON.parse(JSON.stringify(result.message)).content,
    (sdk.lastSnapshot as { content: unknown }).content,
  );
  assert.equal(result.message?.stop_reason, "end_turn");
});
