/**
 * Graceful shutdown: running streams may finish within the grace period, the ones still running
 * then end with a well-formed error event (recorded as incomplete, their upstream aborted),
 * stats writes are awaited, and only then does the process exit.
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { memorySink, type RequestSummary } from "../lib/stats/request_summary.ts";
import { memorySpendStore } from "../lib/stats/budgets.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { createLifecycle, installShutdown, type Lifecycle } from "../lib/http/shutdown.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import {
  answeringUpstream,
  kvWithAtomic,
  readFixture,
  startFakeUpstream,
  startMain,
  testConfig,
} from "./helpers.ts";

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

Deno.test("cut /chat streams end the same way: an error event for SSE, a marked error line for plain text", async (t) => {
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
        // A marked line, as for /chat's other failures: no failed body (Deno printed a stack
        // trace for each one).
        assert.equal(failure, undefined, "the plain text stream ends cleanly");
        assert.match(text, /\n\[sluice error\] api_error: sluice is shutting down\n$/);
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

/**
 * `kv` with its commits held while `hold()` is on: what is written after a response ends can be
 * caught before it reaches KV. `inFlight` counts commits begun and not yet done.
 */
function heldKv(kv: Deno.Kv) {
  let gate: Promise<void> = Promise.resolve();
  let release = () => {};
  const counts = { inFlight: 0 };
  const proxy = kvWithAtomic(kv, (operation) => {
    const commit = operation.commit.bind(operation);
    operation.commit = async () => {
      counts.inFlight++;
      try {
        await gate;
        return await commit();
      } finally {
        counts.inFlight--;
      }
    };
  });
  return {
    kv: proxy,
    counts,
    hold: () => void (gate = new Promise((resolve) => (release = resolve))),
    release: () => release(),
  };
}

Deno.test("shutdown waits for a resumable stream's last writes before it closes KV", async (t) => {
  const fixture = await readFixture("three-words.sse");
  const upstream = answeringUpstream(fixture, "text/event-stream");
  const cases = [
    { path: "/v1/messages", init: request("http://sluice.test") },
    {
      path: "/chat",
      init: new Request("http://sluice.test/chat", {
        method: "POST",
        headers: { "content-type": "application/json", accept: "text/event-stream" },
        body: JSON.stringify({ message: "hi" }),
      }),
    },
  ];
  for (const { path, init } of cases) {
    await t.step(path, async () => {
      const memory = await Deno.openKv(":memory:");
      const held = heldKv(memory);
      const lifecycle = createLifecycle();
      const app = createApp({
        config: testConfig(),
        upstream,
        logger: silentLogger,
        kv: held.kv,
        // Stats and spend elsewhere: only the stream's own writes go to this KV.
        stats: memorySink(),
        spend: memorySpendStore(),
        lifecycle,
      });
      try {
        held.hold();
        if (path === "/v1/messages") init.headers.set("x-sluice-resumable", "true");
        const response = await app.fetch(init);
        assert.ok(response.headers.get("x-sluice-stream-id"), "the stream is resumable");
        await response.text(); // the client has all of it; the stream's writes are held
        assert.ok(held.counts.inFlight > 0, "a write is still on its way");
        // While the write is held, shutdown's wait for tracked work cannot end: it times out.
        assert.equal(await lifecycle.settle(30), 1, "the stream's last write is waited for");
        held.release();
        assert.equal(await lifecycle.settle(10_000), 0);
        assert.equal(held.counts.inFlight, 0, "and is done when the wait ends");
      } finally {
        held.release();
        memory.close();
      }
    });
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

/**
 * A fake upstream on 127.0.0.1 whose answers never come: no headers at all, or (for
 * `/v1/messages` without `stream`) headers and a body that stops after its first bytes. Every
 * request it holds is let go by `close`.
 */
function stalledUpstream() {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const fake = startFakeUpstream(async (_request, seen) => {
    if (seen.path === "/v1/messages" && !JSON.parse(seen.body).stream) {
      const body = new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(new TextEncoder().encode('{"id":"msg_'));
          await released;
          controller.close();
        },
      });
      return new Response(body, { headers: { "content-type": "application/json" } });
    }
    await released;
    return new Response("late", { status: 500 });
  });
  return {
    url: fake.url,
    requests: fake.requests,
    async close() {
      release();
      await fake.close();
    },
  };
}

Deno.test("after the grace period, requests still waiting for the upstream end with a 503 in their API's shape, stats are written and the process exits", async (t) => {
  const upstreamServer = stalledUpstream();
  const lifecycle = createLifecycle();
  const events: string[] = [];
  const stats = {
    record(_summary: RequestSummary) {
      events.push("recorded");
      return Promise.resolve();
    },
  };
  // Without the cut these would wait for the upstream's limits (2 s here, 600 s by default) and
  // end as 504s instead.
  const upstream = createUpstream({
    mode: "live",
    apiKey: "sk-ant-test",
    baseURL: upstreamServer.url,
    maxRetries: 0,
    timeoutMs: 2000,
    streamPolicy: { idleTimeoutMs: 2000 },
  });
  const app = createApp({
    config: testConfig({
      ANTHROPIC_API_KEY: "sk-ant-test",
      ANTHROPIC_BASE_URL: upstreamServer.url,
    }),
    upstream,
    logger: silentLogger,
    stats,
    lifecycle,
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const url = `http://127.0.0.1:${server.addr.port}`;
  let exitCode: number | undefined;
  const handle = installShutdown({
    server,
    lifecycle,
    logger: silentLogger,
    graceMs: 30,
    signals: [],
    exit: (code) => {
      exitCode = code;
      events.push("exit");
    },
    close: () => void events.push("closed"),
  });
  const message = (stream: boolean) =>
    JSON.stringify({ model: "claude-sonnet-5-5", max_tokens: 8, stream, messages: [] });
  const json = { "content-type": "application/json" };
  const waiting: [string, Promise<Response>, "anthropic" | "openai"][] = [
    [
      "a streamed message before its headers",
      fetch(`${url}/v1/messages`, { method: "POST", headers: json, body: message(true) }),
      "anthropic",
    ],
    [
      "a non-streamed message whose body stalls",
      fetch(`${url}/v1/messages`, { method: "POST", headers: json, body: message(false) }),
      "anthropic",
    ],
    ["a forwarded GET /v1/models", fetch(`${url}/v1/models`), "anthropic"],
    [
      "an OpenAI-style chat completion",
      fetch(`${url}/v1/chat/completions`, { method: "POST", headers: json, body: message(false) }),
      "openai",
    ],
    [
      "a /chat before its headers",
      fetch(`${url}/chat`, {
        method: "POST",
        headers: { ...json, accept: "text/plain" },
        body: JSON.stringify({ message: "hi" }),
      }),
      "anthropic",
    ],
  ];
  try {
    // Every request has reached the upstream before the signal.
    for (let i = 0; i < 500 && upstreamServer.requests.length < waiting.length; i++) {
      await new Promise((r) => setTimeout(r, 2));
    }
    assert.equal(upstreamServer.requests.length, waiting.length);
    const stopping = handle.run("SIGTERM");
    for (const [name, pending, shape] of waiting) {
      await t.step(name, async () => {
        const response = await pending;
        assert.equal(response.status, 503);
        const body = await response.json();
        const error = shape === "openai"
          ? body.error
          : (assert.equal(body.type, "error"), body.error);
        assert.equal(error.type, "api_error");
        assert.match(error.message, /shutting down/);
      });
    }
    await stopping;
    assert.equal(exitCode, 0);
    assert.deepEqual(events.slice(-2), ["closed", "exit"], "the stores closed, then the exit");
  } finally {
    handle.dispose();
    await server.finished;
    await upstreamServer.close();
  }
});

Deno.test("main.ts on SIGTERM ends requests stalled before the upstream's headers with a 503, exits 0 within grace + 3 s, and prints no stack trace", async () => {
  const upstreamServer = stalledUpstream();
  const kvDir = await Deno.makeTempDir();
  const graceMs = 200;
  const sluice = await startMain({
    ANTHROPIC_API_KEY: "sk-ant-test-main",
    ANTHROPIC_BASE_URL: upstreamServer.url,
    SLUICE_KV_PATH: `${kvDir}/kv.sqlite3`,
    SLUICE_SHUTDOWN_GRACE_MS: String(graceMs),
    SLUICE_LOG_LEVEL: "info",
  });
  try {
    const json = { "content-type": "application/json" };
    const stalled = [
      fetch(`${sluice.url}/v1/messages`, {
        method: "POST",
        headers: json,
        body: JSON.stringify({ model: "claude-sonnet-5-5", max_tokens: 8, messages: [] }),
      }),
      fetch(`${sluice.url}/chat`, {
        method: "POST",
        headers: { ...json, accept: "text/plain" },
        body: JSON.stringify({ message: "hi" }),
      }),
    ];
    // (main.ts also checks its default model upstream, with a GET.)
    const posts = () => upstreamServer.requests.filter((r) => r.method === "POST").length;
    for (let i = 0; i < 1000 && posts() < stalled.length; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(posts(), stalled.length, "both reached the upstream");
    Deno.kill(sluice.pid, "SIGTERM");
    // The documented bound (grace + 3 s), with room for a loaded machine; without the cut the
    // requests and the process waited for the first-byte limit (600 s, three times).
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((
      r,
    ) => (timer = setTimeout(() => r("late"), graceMs + 13_000)));
    const ended = await Promise.race([Promise.all([Promise.all(stalled), sluice.status]), late]);
    clearTimeout(timer);
    assert.notEqual(ended, "late", "the requests ended and main.ts exited within the bound");
    const [responses, exited] = ended as [Response[], Deno.CommandStatus];
    for (const response of responses) {
      assert.equal(response.status, 503);
      assert.equal((await response.json()).error.type, "api_error");
    }
    assert.equal(exited.code, 0);
    const status = await sluice.stop();
    assert.equal(status.code, 0);
    assert.match(sluice.seen(), /sluice stopped/);
    assert.doesNotMatch(sluice.errors(), /^\s+at /m, "no stack trace");
  } finally {
    await sluice.stop();
    await upstreamServer.close();
    await Deno.remove(kvDir, { recursive: true });
  }
});
