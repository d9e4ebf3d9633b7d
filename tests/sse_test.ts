import { concatBytes } from "../lib/bytes.ts";
import assert from "node:assert/strict";
import {
  createBoundaryTracker,
  createSseDecoder,
  decodeAll,
  type SseEvent,
} from "../lib/stream/sse.ts";
import { tapStream } from "../lib/stream/tap.ts";
import { splitEvents } from "../lib/replay/pace.ts";
import { readFixture, splitEvery, streamOf, testConfig } from "./helpers.ts";
import { createApp } from "../lib/app.ts";
import { createLogger } from "../lib/log.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";

const enc = (s: string) => new TextEncoder().encode(s);

function decodeChunks(chunks: Uint8Array[]): SseEvent[] {
  const events: SseEvent[] = [];
  const decoder = createSseDecoder((event) => events.push(event));
  for (const chunk of chunks) decoder.feed(chunk);
  decoder.end();
  return events;
}

Deno.test("the decoder reads LF, CRLF and CR line endings as the same events", () => {
  const lf = 'event: a\ndata: {"x":1}\n\nevent: b\ndata: 2\n\n';
  const expected = decodeAll(enc(lf));
  assert.equal(expected.length, 2);
  assert.deepEqual(decodeAll(enc(lf.replaceAll("\n", "\r\n"))), expected);
  assert.deepEqual(decodeAll(enc(lf.replaceAll("\n", "\r"))), expected);
});

Deno.test("the decoder gives the same events whatever the chunk boundaries, down to one byte", () => {
  const text = "event: a\r\ndata: é😀и\r\n\r\n: comment\r\nevent: b\rdata: x\r\r";
  const bytes = enc(text);
  const whole = decodeChunks([bytes]);
  assert.equal(whole.length, 2);
  assert.equal(whole[0].data, "é😀и");
  for (const size of [1, 2, 3, 5]) assert.deepEqual(decodeChunks(splitEvery(bytes, size)), whole);
});

Deno.test("the decoder skips comments and joins multi-line data with newlines", () => {
  const events = decodeAll(enc(": keepalive\n\nevent: a\ndata: one\ndata: two\n\n"));
  assert.deepEqual(events.map((e) => [e.event, e.data]), [["a", "one\ntwo"]]);
});

Deno.test("the decoder drops a final event that never got its blank line", () => {
  const events = decodeAll(enc("event: a\ndata: 1\n\nevent: b\ndata: 2\n"));
  assert.deepEqual(events.map((e) => e.event), ["a"]);
  assert.deepEqual(decodeAll(enc('event: a\ndata: 1\n\nevent: b\ndata: {"cut')), [events[0]]);
});

Deno.test("the decoder reports comments when asked", () => {
  const comments: string[] = [];
  const decoder = createSseDecoder(() => {}, { onComment: (c) => comments.push(c) });
  decoder.feed(enc(": ping one\n\n:two\n\n"));
  decoder.end();
  assert.deepEqual(comments, ["ping one", "two"]);
});

Deno.test("splitting a stream at event boundaries keeps every byte", async (t) => {
  for (
    const text of [
      "event: a\ndata: 1\n\nevent: b\ndata: 2\n\n",
      "a\r\n\r\nb\r\n\r\ntail",
      "x\r\ry\r\r",
    ]
  ) {
    await t.step(JSON.stringify(text), () => {
      const bytes = enc(text);
      const parts = splitEvents(bytes);
      assert.ok(parts.length >= 2);
      assert.equal(new TextDecoder().decode(concatBytes(parts)), text);
    });
  }
});

Deno.test("the boundary tracker knows whether the bytes so far end with a blank line", () => {
  const tracker = createBoundaryTracker();
  assert.equal(tracker.atBoundary(), true);
  tracker.see(enc("event: a\ndata: 1\n"));
  assert.equal(tracker.atBoundary(), false);
  tracker.see(enc("\n"));
  assert.equal(tracker.atBoundary(), true);
  tracker.see(enc("event: b\r\ndata: 2\r\n\r"));
  assert.equal(tracker.atBoundary(), false);
  tracker.see(enc("\n"));
  assert.equal(tracker.atBoundary(), true);
});

Deno.test("the tap forwards every chunk unchanged and in order, then tells its hooks", async () => {
  const chunks = splitEvery(enc("event: a\ndata: 1\n\nevent: b\ndata: 2\n\n"), 3);
  const seen: string[] = [];
  let closed = false;
  const tapped = tapStream(streamOf(chunks), {
    onChunk: (chunk) => seen.push(new TextDecoder().decode(chunk)),
    onClose: () => {
      closed = true;
    },
    onCancel: () => assert.fail("not cancelled"),
    onError: () => assert.fail("no error"),
  });
  const received: Uint8Array[] = [];
  for await (const chunk of tapped) received.push(chunk);
  assert.deepEqual(received, chunks);
  assert.equal(seen.join(""), new TextDecoder().decode(concatBytes(chunks)));
  assert.equal(closed, true);
});

Deno.test("a long stream keeps every byte in order through the tap's one reused buffer, byte stream or not", async (t) => {
  // 300 chunks through one BYOB buffer: a chunk not copied out would be overwritten.
  const text = Array.from({ length: 300 }, (_, i) => `event: e\ndata: {"i":${i}}\n\n`).join("");
  const chunks = splitEvery(enc(text), 7);
  const byteStream = () => {
    let i = 0;
    return new ReadableStream({
      type: "bytes",
      pull(controller: ReadableByteStreamController) {
        if (i < chunks.length) controller.enqueue(chunks[i++].slice());
        else {
          controller.close();
          controller.byobRequest?.respond(0); // a BYOB read waiting is told the stream ended
        }
      },
    });
  };
  for (
    const [name, make] of [["a byte stream", byteStream], [
      "a default stream",
      () => streamOf(chunks),
    ]] as const
  ) {
    await t.step(name, async () => {
      let seen = "";
      const decoder = new TextDecoder();
      const tapped = tapStream(make(), {
        onChunk: (chunk) => (seen += decoder.decode(chunk, { stream: true })),
        onClose: () => {},
        onCancel: () => assert.fail("not cancelled"),
        onError: (error) => assert.fail(`no error: ${error}`),
      });
      const received = await new Response(tapped).text();
      assert.equal(received, text);
      assert.equal(seen, text);
    });
  }
});

Deno.test("bytes onClose returns follow the upstream's last byte, then the stream ends", async (t) => {
  for (
    const [name, upstream, boundary] of [
      ["at an event boundary", "event: a\ndata: 1\n\n", true],
      ["inside an event", "event: a\ndata: 1\n\nevent: b\nda", false],
    ] as const
  ) {
    await t.step(name, async () => {
      const states: boolean[] = [];
      const tapped = tapStream(streamOf(splitEvery(enc(upstream), 4)), {
        onChunk: () => {},
        onClose: (state) => {
          states.push(state.atEventBoundary);
          return enc("LAST");
        },
        onCancel: () => assert.fail("not cancelled"),
        onError: () => assert.fail("no error"),
      });
      const received: Uint8Array[] = [];
      for await (const chunk of tapped) received.push(chunk);
      assert.equal(new TextDecoder().decode(concatBytes(received)), upstream + "LAST");
      assert.deepEqual(states, [boundary]);
    });
  }
});

Deno.test("a hook that throws does not stop the bytes", async () => {
  const chunks = [enc("a"), enc("b"), enc("c")];
  const hookErrors: unknown[] = [];
  const tapped = tapStream(streamOf(chunks), {
    onChunk: () => {
      throw new Error("observer bug");
    },
    onClose: () => {},
    onCancel: () => {},
    onError: () => undefined,
  }, (error) => hookErrors.push(error));
  const received: Uint8Array[] = [];
  for await (const chunk of tapped) received.push(chunk);
  assert.deepEqual(received, chunks);
  assert.equal(hookErrors.length, 3);
});

Deno.test("cancelling the tapped stream reports the cancel and cancels the upstream", async () => {
  let upstreamCancelled = false;
  const upstream = new ReadableStream<Uint8Array>({
    pull: (c) => c.enqueue(enc("data: x\n\n")),
    cancel: () => {
      upstreamCancelled = true;
    },
  });
  let cancelReason: unknown;
  const tapped = tapStream(upstream, {
    onChunk: () => {},
    onClose: () => assert.fail("not closed"),
    onCancel: (reason) => (cancelReason = reason),
    onError: () => undefined,
  });
  const reader = tapped.getReader();
  await reader.read();
  await reader.cancel("client left");
  assert.equal(cancelReason, "client left");
  assert.equal(upstreamCancelled, true);
});

Deno.test("when the upstream read fails the tap ends the stream with the bytes onError returns", async () => {
  let sent = 0;
  const upstream = new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent++ === 0) c.enqueue(enc('event: a\ndata: 1\n\nevent: b\ndata: {"cu'));
      else c.error(new Error("connection reset"));
    },
  });
  let boundary: boolean | undefined;
  const tapped = tapStream(upstream, {
    onChunk: () => {},
    onClose: () => assert.fail("not a clean close"),
    onCancel: () => {},
    onError: (_error, state) => {
      boundary = state.atEventBoundary;
      return enc("\nevent: error\ndata: {}\n\n");
    },
  });
  let text = "";
  for await (const chunk of tapped) text += new TextDecoder().decode(chunk);
  assert.equal(boundary, false);
  assert.ok(text.endsWith("\nevent: error\ndata: {}\n\n"));
});

Deno.test("an SSE event past the size bound is dropped with a notice, and the events after it are decoded", () => {
  const events: string[] = [];
  let overflows = 0;
  const decoder = createSseDecoder((event) => events.push(`${event.event}:${event.data}`), {
    maxEventChars: 1024,
    onOverflow: () => overflows++,
  });
  const enc = (s: string) => new TextEncoder().encode(s);
  decoder.feed(enc("event: a\ndata: one\n\n"));
  // A 5 MB line in 4 KiB pieces: without the bound the parser held all of it.
  decoder.feed(enc("event: big\ndata: "));
  const piece = enc("x".repeat(4096));
  for (let i = 0; i < 1280; i++) decoder.feed(piece);
  decoder.feed(enc("\n\nevent: b\ndata: two\n\n"));
  decoder.end();
  assert.deepEqual(events, ["a:one", "b:two"]);
  assert.ok(overflows >= 1, "the overflow was reported");
});

Deno.test("a stream with an oversized event still reaches the client byte for byte", async () => {
  const fixture = await readFixture("three-words.sse");
  const huge = new TextEncoder().encode(
    `event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"${
      "y".repeat(300_000)
    }"}}\n\n`,
  );
  const text = new TextDecoder().decode(fixture);
  const at = text.indexOf("event: content_block_stop");
  const bytes = new Uint8Array([
    ...new TextEncoder().encode(text.slice(0, at)),
    ...huge,
    ...new TextEncoder().encode(text.slice(at)),
  ]);
  const upstream = createUpstream({
    mode: "live",
    apiKey: "sk-ant-test-key",
    baseURL: "http://upstream.test",
    maxRetries: 0,
    streamPolicy: { maxEventChars: 64 * 1024 },
    fetch: () =>
      Promise.resolve(
        new Response(streamOf(splitEvery(bytes, 4096)), {
          headers: { "content-type": "text/event-stream" },
        }),
      ),
  });
  const lines: string[] = [];
  const logger = createLogger({ level: "warn", write: (_level, line) => lines.push(line) });
  const app = createApp({ config: testConfig(), upstream, logger });
  const response = await app.request("http://sluice.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "claude-sonnet-5-5", max_tokens: 8, stream: true, messages: [] }),
  });
  assert.deepEqual(new Uint8Array(await response.arrayBuffer()), bytes);
  assert.ok(lines.some((line) => line.includes("over the size limit")), lines.join("\n"));
});
