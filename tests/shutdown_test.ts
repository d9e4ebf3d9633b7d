/**
 * Graceful shutdown: running streams may finish within the grace period, the ones still running
 * then end with a well-formed error event (recorded as incomplete, their upstream aborted),
 * stats writes are awaited, and only then does the process exit.
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import type { RequestSummary } from "../lib/stats/request_summary.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { createLifecycle, installShutdown, type Lifecycle } from "../lib/http/shutdown.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { readFixture, testConfig } from "./helpers.ts";

const request = (url: string) =>
  new Request(`${url}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: "claude-test",
      max_tokens: 16,
      stream: true,
      messages: [{ role: "user", content: "hi" }],
    }),
  });

/**
 * sluice over a fake upstream that sends the first part of a fixture, then the rest once
 * `finish()` is called (or never). Stats go to a sink whose writes take a while.
 */
async function setup(lifecycle: Lifecycle) {
  const fixture = await readFixture("three-words.sse");
  const cut = new TextDecoder().decode(fixture).indexOf("event: content_block_delta");
  const signals: AbortSignal[] = [];
  let finish: () => void = () => {};
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const upstream = createUpstream({
    mode: "live",
    apiKey: "sk-ant-test",
    baseURL: "http://upstream.test",
    maxRetries: 0,
    fetch: (_input, init) => {
      signals.push(init!.signal!);
      const body = new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(fixture.subarray(0, cut));
          await finished;
          controller.enqueue(fixture.subarray(cut));
          controller.close();
        },
      });
      return Promise.resolve(
        new Response(body, { headers: { "content-type": "text/event-stream" } }),
      );
    },
  });
  const records: RequestSummary[] = [];
  const events: string[] = [];
  const stats = {
    async record(summary: RequestSummary) {
      await new Promise((r) => setTimeout(r, 20)); // a slow store
      records.push(summary);
      events.push("recorded");
    },
  };
  const app = createApp({ config: testConfig(), upstream, logger: silentLogger, stats, lifecycle });
  return { app, fixture, signals, finish, records, events };
}

Deno.test("cut streams end with an api_error event after the current event, are recorded as incomplete, and stop the upstream", async () => {
  const lifecycle = createLifecycle();
  const { app, signals, records } = await setup(lifecycle);
  const response = await app.request(request("http://sluice.test"));
  const reader = response.body!.getReader();
  const first = await reader.read();
  assert.equal(first.done, false);
  assert.equal(lifecycle.active(), 1);
  lifecycle.cutStreams();
  let text = new TextDecoder().decode(first.value);
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    text += new TextDecoder().decode(r.value);
  }
  const events = decodeAll(new TextEncoder().encode(text));
  const last = events.at(-1)!;
  assert.equal(last.event, "error");
  assert.deepEqual(JSON.parse(last.data).error, {
    type: "api_error",
    message: "sluice is shutting down",
  });
  assert.equal(events.filter((e) => e.event === "message_start").length, 1, "events kept whole");
  assert.equal(signals[0].aborted, true, "the upstream request was aborted");
  await lifecycle.settle(1000);
  assert.equal(records[0].outcome, "incomplete");
  assert.equal(lifecycle.active(), 0);
});

Deno.test("cut /chat streams end the same way: an error event for SSE, a failed stream for plain text", async (t) => {
  for (const accept of ["text/event-stream", "text/plain"]) {
    await t.step(accept, async () => {
      const lifecycle = createLifecycle();
      const { app, signals, records } = await setup(lifecycle);
      const response = await app.request("http://sluice.test/chat", {
        method: "POST",
        // The page and the terminal client send this; under the default (finish) the upstream
        // call is read to its end instead of being stopped.
        headers: { "content-type": "application/json", accept, "x-sluice-on-disconnect": "abort" },
        body: JSON.stringify({ message: "hi" }),
      });
      const reader = response.body!.getReader();
      // For SSE the first event is out; plain text has sent nothing yet (no text so far).
      if (accept === "text/event-stream") assert.equal((await reader.read()).done, false);
      assert.equal(lifecycle.active(), 1, "guarded once");
      lifecycle.cutStreams();
      let text = "";
      let failure: unknown;
      try {
        for (let r = await reader.read(); !r.done; r = await reader.read()) {
          text += new TextDecoder().decode(r.value);
        }
      } catch (error) {
        failure = error;
      }
      if (accept === "text/event-stream") {
        const last = decodeAll(new TextEncoder().encode(text)).at(-1)!;
        assert.equal(last.event, "error");
        assert.equal(JSON.parse(last.data).error.message, "sluice is shutting down");
      } else {
        assert.ok(failure instanceof Error, "the plain text stream fails");
      }
      assert.equal(signals[0].aborted, true, "the upstream request was aborted");
      await lifecycle.settle(1000);
      assert.equal(records[0].outcome, "incomplete");
      assert.equal(lifecycle.active(), 0);
    });
  }
});

Deno.test("on shutdown, streams that finish within the grace period end normally, then stats are written, then exit", async () => {
  const lifecycle = createLifecycle();
  const { app, fixture, finish, events } = await setup(lifecycle);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const url = `http://127.0.0.1:${server.addr.port}`;
  let exitCode: number | undefined;
  const handle = installShutdown({
    server,
    lifecycle,
    logger: silentLogger,
    graceMs: 10_000,
    signals: [],
    exit: (code) => {
      exitCode = code;
      events.push("exit");
    },
    close: () => void events.push("closed"),
  });
  try {
    const response = await fetch(request(url));
    const reader = response.body!.getReader();
    await reader.read();
    const stopping = handle.run("SIGTERM");
    // New connections are refused while the running stream goes on.
    await new Promise((r) => setTimeout(r, 20));
    await assert.rejects(fetch(`${url}/health`));
    // Connections already open (and load balancers probing them) see health turn 503.
    const health = await app.request("/health");
    assert.equal(health.status, 503);
    assert.equal((await health.json()).status, "draining");
    finish();
    let rest = "";
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      rest += new TextDecoder().decode(r.value);
    }
    assert.ok(
      rest.endsWith(new TextDecoder().decode(fixture).slice(-40)),
      "the stream ended whole",
    );
    assert.ok(!rest.includes("event: error"));
    await stopping;
    assert.equal(exitCode, 0);
    assert.deepEqual(events, ["recorded", "closed", "exit"]);
  } finally {
    handle.dispose();
    await server.finished;
  }
});

Deno.test("on shutdown, streams still running after the grace period end with an error event", async () => {
  const lifecycle = createLifecycle();
  const { app, events, records } = await setup(lifecycle);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const handle = installShutdown({
    server,
    lifecycle,
    logger: silentLogger,
    graceMs: 30,
    signals: [],
    exit: () => void events.push("exit"),
  });
  try {
    const response = await fetch(request(`http://127.0.0.1:${server.addr.port}`));
    const stopping = handle.run();
    const text = await response.text();
    const last = decodeAll(new TextEncoder().encode(text)).at(-1)!;
    assert.equal(last.event, "error");
    assert.match(last.data, /shutting down/);
    await stopping;
    assert.deepEqual(events, ["recorded", "exit"]);
    assert.equal(records[0].outcome, "incomplete");
  } finally {
    handle.dispose();
    await server.finished;
  }
});

Deno.test("a signal starts the shutdown and a second one exits at once", async () => {
  const lifecycle = createLifecycle();
  let release!: () => void;
  const shutdownHeld = new Promise<void>((resolve) => (release = resolve));
  const codes: number[] = [];
  let shutdownCalled = false;
  const handle = installShutdown({
    server: {
      shutdown: () => {
        shutdownCalled = true;
        return shutdownHeld;
      },
      finished: shutdownHeld,
    },
    lifecycle,
    logger: silentLogger,
    graceMs: 60_000,
    signals: ["SIGUSR2"],
    exit: (code) => codes.push(code),
  });
  try {
    Deno.kill(Deno.pid, "SIGUSR2");
    for (let i = 0; i < 500 && !shutdownCalled; i++) await new Promise((r) => setTimeout(r, 2));
    assert.equal(shutdownCalled, true, "the first signal stops the server");
    assert.deepEqual(codes, []);
    Deno.kill(Deno.pid, "SIGUSR2");
    for (let i = 0; i < 500 && codes.length === 0; i++) await new Promise((r) => setTimeout(r, 2));
    assert.deepEqual(codes, [1], "the second signal exits at once");
  } finally {
    handle.dispose();
    release();
    await handle.run();
  }
  assert.deepEqual(codes, [1, 0]);
});
