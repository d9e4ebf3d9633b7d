/**
 * Client disconnects over real sockets: a fake upstream and sluice, each a `Deno.serve` on
 * 127.0.0.1. When the client cancels mid-stream, the upstream request must be aborted at once
 * and the request recorded as `client_aborted` with the tokens seen so far.
 *
 * The delay from the client's cancel to the upstream seeing its connection close is measured
 * and printed (not asserted: speed belongs in figures, not in pass/fail).
 */
import { concatBytes } from "../lib/bytes.ts";
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { systemClock } from "../lib/clock.ts";
import { startCall } from "../lib/proxy/messages_call.ts";
import { silentLogger } from "../lib/log.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { createLifecycle } from "../lib/http/shutdown.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { testConfig } from "./helpers.ts";

const concat = (...parts: Uint8Array[]) => concatBytes(parts);
const enc = (s: string) => new TextEncoder().encode(s);
const event = (name: string, data: unknown) =>
  enc(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);

const MESSAGE_START = event("message_start", {
  type: "message_start",
  message: {
    id: "msg_fake",
    type: "message",
    role: "assistant",
    model: "claude-test",
    content: [],
    stop_reason: null,
    stop_sequence: null,
    usage: { input_tokens: 12, output_tokens: 1 },
  },
});
const BLOCK_START = event("content_block_start", {
  type: "content_block_start",
  index: 0,
  content_block: { type: "text", text: "" },
});
const delta = (text: string) =>
  event("content_block_delta", {
    type: "content_block_delta",
    index: 0,
    delta: { type: "text_delta", text },
  });
const ENDING = [
  event("content_block_stop", { type: "content_block_stop", index: 0 }),
  event("message_delta", {
    type: "message_delta",
    delta: { stop_reason: "end_turn", stop_sequence: null },
    usage: { output_tokens: 7 },
  }),
  event("message_stop", { type: "message_stop" }),
];

/**
 * A fake Anthropic API on a raw TCP socket that streams a text delta every `intervalMs` for
 * ever (or `deltas` of them, then ends), and notes when each connection is closed by its
 * client. Raw TCP rather than `Deno.serve`: a pending read on the socket sees the close the
 * moment it arrives, whereas an HTTP server may notice only at its next write, which would
 * measure the fake, not sluice.
 */
function endlessUpstream(options: { intervalMs: number; deltas?: number }) {
  const closedAt: number[] = [];
  let onClosed: () => void = () => {};
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  const serving = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      const task = serveOne(conn).finally(() => {
        conns.delete(conn);
        tasks.delete(task);
      });
      tasks.add(task);
    }
  })();

  async function serveOne(conn: Deno.Conn) {
    await readRequest(conn);
    let done = false;
    const write = async (bytes: Uint8Array) => {
      const framed = concat(
        enc(`${bytes.length.toString(16)}\r\n`),
        bytes,
        enc("\r\n"),
      );
      for (let n = 0; n < framed.length;) n += await conn.write(framed.subarray(n));
    };
    // The pending read that notices the client's close (EOF or reset) at once.
    const closed = conn.read(new Uint8Array(1)).catch(() => null).then(() => {
      if (done) return;
      done = true;
      closedAt.push(performance.now());
      onClosed();
    });
    try {
      await conn.write(enc(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nrequest-id: req_endless\r\n" +
          "transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
      ));
      await write(MESSAGE_START);
      await write(BLOCK_START);
      for (let sent = 0; !done; sent++) {
        await new Promise((r) => setTimeout(r, options.intervalMs));
        if (done) break;
        if (options.deltas !== undefined && sent >= options.deltas) {
          for (const chunk of ENDING) await write(chunk);
          await conn.write(enc("0\r\n\r\n"));
          done = true; // a normal end, not a disconnect
          break;
        }
        await write(delta(` word${sent}`));
      }
    } catch {
      // A write after the client left; the read above has noted the close.
    } finally {
      try {
        conn.close();
      } catch { /* already closed */ }
      await closed;
    }
  }

  return {
    url: `http://127.0.0.1:${listener.addr.port}`,
    closedAt,
    /** Resolves when the next upstream connection is closed by its client. */
    nextClose: () => new Promise<void>((resolve) => (onClosed = resolve)),
    async close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed */ }
      }
      await serving.catch(() => {});
      await Promise.all([...tasks]);
    },
  };
}

/** Reads one HTTP request (headers, then a content-length body). */
async function readRequest(conn: Deno.Conn) {
  let buffered: Uint8Array = new Uint8Array(0);
  const buf = new Uint8Array(16 * 1024);
  let headerEnd = -1;
  while (headerEnd < 0) {
    const n = await conn.read(buf);
    if (n === null) return;
    buffered = concat(buffered, buf.subarray(0, n));
    headerEnd = new TextDecoder().decode(buffered).indexOf("\r\n\r\n");
  }
  const head = new TextDecoder().decode(buffered.subarray(0, headerEnd));
  const length = Number(/content-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
  let have = buffered.length - headerEnd - 4;
  while (have < length) {
    const n = await conn.read(buf);
    if (n === null) return;
    have += n;
  }
}

/** sluice on 127.0.0.1 in front of `upstreamUrl`, built as main.ts builds it. */
function sluiceServer(upstreamUrl: string) {
  const stats = memorySink();
  const upstream = createUpstream({
    mode: "live",
    apiKey: "sk-ant-test",
    baseURL: upstreamUrl,
    maxRetries: 0,
    streamPolicy: { idleTimeoutMs: 60_000, keepAliveMs: 15_000 },
  });
  const app = createApp({
    config: testConfig(),
    upstream,
    logger: silentLogger,
    stats,
    lifecycle: createLifecycle(),
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  return { url: `http://127.0.0.1:${server.addr.port}`, stats, close: () => server.shutdown() };
}

const streamRequest = (url: string) =>
  fetch(`${url}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": "caller" },
    body: JSON.stringify({
      model: "claude-test",
      max_tokens: 64,
      stream: true,
      messages: [{ role: "user", content: "go on for ever" }],
    }),
  });

async function waitFor(check: () => boolean, what: string) {
  for (let i = 0; i < 2000 && !check(); i++) await new Promise((r) => setTimeout(r, 1));
  assert.ok(check(), `timed out waiting for ${what}`);
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length - 1) * p))];
}

Deno.test("a client that goes away mid-stream aborts the upstream request at once and is recorded as client_aborted", async () => {
  const upstream = endlessUpstream({ intervalMs: 5 });
  const sluice = sluiceServer(upstream.url);
  const rounds = 25;
  const delays: number[] = [];
  try {
    for (let round = 0; round < rounds; round++) {
      const response = await streamRequest(sluice.url);
      assert.equal(response.status, 200);
      const reader = response.body!.getReader();
      let text = "";
      while (!text.includes("word3")) {
        const { value, done } = await reader.read();
        assert.equal(done, false, "the stream goes on until the client leaves");
        text += new TextDecoder().decode(value);
      }
      const closed = upstream.nextClose();
      const cancelledAt = performance.now();
      await reader.cancel();
      await closed;
      delays.push(upstream.closedAt.at(-1)! - cancelledAt);
      await waitFor(() => sluice.stats.records.length === round + 1, "the summary");
      const summary = sluice.stats.records[round];
      assert.equal(summary.outcome, "client_aborted");
      assert.equal(summary.usage.input_tokens, 12, "tokens seen so far are kept");
      assert.ok((summary.events.content_block_delta ?? 0) >= 4, "the deltas sent were counted");
    }
  } finally {
    await sluice.close();
    await upstream.close();
  }
  assert.equal(upstream.closedAt.length, rounds, "every upstream request was ended");
  const sorted = [...delays].sort((a, b) => a - b);
  console.log(
    `disconnect → upstream abort on loopback over ${rounds} streams: ` +
      `median ${percentile(sorted, 0.5).toFixed(2)} ms, p90 ${
        percentile(sorted, 0.9).toFixed(2)
      } ms, ` +
      `max ${sorted.at(-1)!.toFixed(2)} ms`,
  );
});

Deno.test("a stream the client reads to the end is recorded as ok, not as a disconnect", async () => {
  const upstream = endlessUpstream({ intervalMs: 1, deltas: 5 });
  const sluice = sluiceServer(upstream.url);
  try {
    const response = await streamRequest(sluice.url);
    const text = await response.text();
    assert.ok(text.includes("event: message_stop"));
    await waitFor(() => sluice.stats.records.length === 1, "the summary");
    const summary = sluice.stats.records[0];
    assert.equal(summary.outcome, "ok");
    assert.equal(summary.usage.output_tokens, 7);
    assert.equal(upstream.closedAt.length, 0, "the upstream was not aborted");
  } finally {
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("a client that leaves before its answer is handed over stops the upstream call", async (t) => {
  const base = {
    clock: systemClock,
    logger: silentLogger,
    startedAt: systemClock.now(),
    endpoint: "/v1/messages",
    requestId: "req_local",
    model: "claude-test",
  };
  const request = (stream: boolean) => ({
    body: new TextEncoder().encode("{}"),
    stream,
  });
  /** An upstream fetch that answers with `respond`, noting the signal of each attempt. */
  const fake = (respond: (signal: AbortSignal, attempt: number) => Promise<Response>) => {
    const signals: AbortSignal[] = [];
    const upstream = createUpstream({
      mode: "live",
      apiKey: "sk-ant-test",
      baseURL: "http://upstream.test",
      maxRetries: 2,
      retryMaxWaitMs: 60_000,
      fetch: (_input, init) => {
        signals.push(init!.signal!);
        return respond(init!.signal!, signals.length - 1);
      },
    });
    return { upstream, signals };
  };
  const never = (signal: AbortSignal) =>
    new Promise<Response>((_resolve, reject) =>
      signal.addEventListener("abort", () => reject(signal.reason), { once: true })
    );

  await t.step("while the upstream has not answered", async () => {
    const { upstream, signals } = fake(never);
    const client = new AbortController();
    const call = startCall({
      ...base,
      upstream,
      request: request(true),
      clientSignal: client.signal,
    });
    await waitFor(() => signals.length === 1, "the upstream call");
    client.abort();
    const result = await call;
    assert.equal(result.status, 499);
    assert.equal(signals[0].aborted, true, "the upstream call was aborted");
    assert.equal((await result.finished).outcome, "client_aborted");
  });

  await t.step("while sluice waits to retry", async () => {
    const { upstream, signals } = fake(() =>
      Promise.resolve(
        Response.json({ type: "error", error: { type: "overloaded_error", message: "o" } }, {
          status: 529,
          headers: { "retry-after": "30" },
        }),
      )
    );
    const client = new AbortController();
    const call = startCall({
      ...base,
      upstream,
      request: request(true),
      clientSignal: client.signal,
    });
    await waitFor(() => signals.length === 1, "the first attempt");
    await new Promise((r) => setTimeout(r, 5)); // into the 30 s wait
    client.abort();
    const result = await call;
    assert.equal(result.status, 499);
    assert.equal(signals.length, 1, "no attempt after the client left");
    assert.equal((await result.finished).outcome, "client_aborted");
  });

  await t.step("while a non-streamed body is on its way", async () => {
    const { upstream, signals } = fake((signal) => {
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('{"id":"msg_'));
          signal.addEventListener("abort", () => controller.error(signal.reason), { once: true });
        },
      });
      return Promise.resolve(
        new Response(body, { headers: { "content-type": "application/json" } }),
      );
    });
    const client = new AbortController();
    const call = startCall({
      ...base,
      upstream,
      request: request(false),
      clientSignal: client.signal,
    });
    await waitFor(() => signals.length === 1, "the upstream call");
    await new Promise((r) => setTimeout(r, 5));
    client.abort();
    const result = await call;
    assert.equal(result.status, 499);
    assert.equal(signals[0].aborted, true);
    assert.equal((await result.finished).outcome, "client_aborted");
  });

  await t.step("a stream handed over is no longer watched by the request signal", async () => {
    const { upstream, signals } = fake(() =>
      Promise.resolve(
        new Response(new Blob([MESSAGE_START, BLOCK_START, ...ENDING]).stream(), {
          headers: { "content-type": "text/event-stream" },
        }),
      )
    );
    const client = new AbortController();
    const call = await startCall({
      ...base,
      upstream,
      request: request(true),
      clientSignal: client.signal,
    });
    client.abort(); // as Deno.serve does once a response is delivered
    assert.equal(signals[0].aborted, false);
    assert.equal(call.kind, "stream");
    if (call.kind === "stream") await new Response(call.stream).arrayBuffer();
    assert.equal((await call.finished).outcome, "ok");
  });
});
