/**
 * Upstream faults: retries before the first byte (and never after), the final failure passed
 * through, capped retry waits, the first-byte limit, dropped and silent streams, keep-alives,
 * broken non-streamed bodies, and the upstream key kept out of every response and log line.
 */
import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { createApp } from "../lib/app.ts";
import { createLogger, silentLogger } from "../lib/log.ts";
import { memorySink, type RequestSummary } from "../lib/stats/request_summary.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { KEEP_ALIVE_COMMENT, tapStream } from "../lib/stream/tap.ts";
import { createUpstream, type UpstreamOptions } from "../lib/proxy/upstream.ts";
import { requestedWaitMs, retryWaitMs, shouldRetry } from "../lib/proxy/retry_policy.ts";
import { readFixture, sdkOracle, splitEvery, streamOf, testConfig } from "./helpers.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

const requestBody = (stream: boolean) =>
  JSON.stringify({
    model: "claude-test",
    max_tokens: 64,
    messages: [{ role: "user", content: "hi" }],
    stream,
  });

const post = (stream = true) =>
  new Request("http://sluice.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: requestBody(stream),
  });

type FakeFetch = (request: Request, attempt: number, signal: AbortSignal) => Promise<Response>;

/** An app over a fake upstream `fetch`; counts attempts and keeps what was recorded. */
function faultyApp(
  respond: FakeFetch,
  options: Partial<UpstreamOptions> = {},
  logger = silentLogger,
) {
  const stats = memorySink();
  const signals: AbortSignal[] = [];
  let attempts = 0;
  const upstream = createUpstream({
    mode: "live",
    apiKey: "sk-ant-test-key",
    baseURL: "http://upstream.test",
    maxRetries: 2,
    ...options,
    fetch: (input, init) => {
      const request = new Request(input, init);
      signals.push(init!.signal!);
      return respond(request, attempts++, init!.signal!);
    },
  });
  const app = createApp({ config: testConfig(), upstream, logger, stats });
  return {
    app,
    stats,
    signals,
    attempts: () => attempts,
    /** The one summary, once recorded (stats are written after the response ends). */
    async summary(): Promise<RequestSummary> {
      for (let i = 0; i < 200 && stats.records.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 1));
      }
      assert.equal(stats.records.length, 1, "one request recorded");
      return stats.records[0];
    },
  };
}

const sse = (body: BodyInit | Uint8Array, headers: Record<string, string> = {}) =>
  new Response(body as BodyInit, {
    headers: { "content-type": "text/event-stream", "request-id": "req_up", ...headers },
  });

const errorJson = (status: number, type: string, headers: Record<string, string> = {}) =>
  new Response(
    JSON.stringify({ type: "error", error: { type, message: `upstream ${type}` } }),
    {
      status,
      headers: { "content-type": "application/json", "request-id": "req_err", ...headers },
    },
  );

/** A body that sends `chunks` and then fails like a reset connection. */
function dropAfter(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]);
      else controller.error(new TypeError("connection reset by peer"));
    },
  });
}

/** A body that sends `chunks` and then nothing, until cancelled. */
function stallAfter(chunks: Uint8Array[], onCancel: () => void = () => {}) {
  let i = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]);
      else return new Promise<void>(() => {});
      return undefined;
    },
    cancel: onCancel,
  });
}

/** The events of the first part of a fixture: up to and including the `n`th blank line. */
function firstEvents(bytes: Uint8Array, n: number): Uint8Array {
  const text = dec(bytes);
  let at = 0;
  for (let i = 0; i < n; i++) at = text.indexOf("\n\n", at) + 2;
  return enc(text.slice(0, at));
}

Deno.test("429, 529, 5xx and connection errors before the first byte are retried, then the stream flows", async (t) => {
  const fixture = await readFixture("three-words.sse");
  const failures: Record<string, () => Response> = {
    "429 rate_limit_error": () => errorJson(429, "rate_limit_error", { "retry-after-ms": "1" }),
    "529 overloaded_error": () => errorJson(529, "overloaded_error", { "retry-after-ms": "1" }),
    "500 api_error": () => errorJson(500, "api_error", { "retry-after-ms": "1" }),
    "503 without a JSON body": () =>
      new Response("<html>bad gateway</html>", { status: 503, headers: { "retry-after-ms": "1" } }),
  };
  for (const [name, fail] of Object.entries(failures)) {
    await t.step(name, async () => {
      const fake = faultyApp((_req, attempt) =>
        Promise.resolve(attempt < 2 ? fail() : sse(fixture))
      );
      const response = await fake.app.request(post());
      assert.equal(response.status, 200);
      assert.deepEqual(new Uint8Array(await response.arrayBuffer()), fixture);
      assert.equal(fake.attempts(), 3);
      const summary = await fake.summary();
      assert.equal(summary.retries, 2);
      assert.equal(summary.outcome, "ok");
    });
  }
  await t.step("connection refused", async () => {
    const fake = faultyApp((_req, attempt) =>
      attempt < 2
        ? Promise.reject(new TypeError("connection refused"))
        : Promise.resolve(sse(fixture))
    );
    const response = await fake.app.request(post());
    assert.equal(response.status, 200);
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), fixture);
    assert.equal(fake.attempts(), 3);
  });
});

Deno.test("the final failure reaches the client with the upstream's status, body and retry headers", async (t) => {
  const recorded = JSON.parse(dec(await readFixture("rate-limited.http.json")));
  await t.step("a recorded 429 without retries", async () => {
    const fake = faultyApp(
      () =>
        Promise.resolve(
          new Response(JSON.stringify(recorded.body), { status: 429, headers: recorded.headers }),
        ),
      { maxRetries: 0 },
    );
    const response = await fake.app.request(post());
    assert.equal(response.status, 429);
    assert.deepEqual(await response.json(), recorded.body);
    for (const name of ["retry-after", "request-id", "anthropic-ratelimit-requests-remaining"]) {
      assert.equal(response.headers.get(name), recorded.headers[name], name);
    }
    assert.equal((await fake.summary()).outcome, "rate_limit_error");
  });
  await t.step("a 529 after every retry is used", async () => {
    const fake = faultyApp(() =>
      Promise.resolve(errorJson(529, "overloaded_error", { "retry-after-ms": "1" }))
    );
    const response = await fake.app.request(post());
    assert.equal(response.status, 529);
    const body = await response.json();
    assert.equal(body.error.type, "overloaded_error");
    assert.equal(body.error.message, "upstream overloaded_error");
    assert.equal(response.headers.get("request-id"), "req_err");
    assert.equal(fake.attempts(), 3);
    assert.equal((await fake.summary()).retries, 2);
  });
  await t.step("a 400 is not retried", async () => {
    const fake = faultyApp(() => Promise.resolve(errorJson(400, "invalid_request_error")));
    const response = await fake.app.request(post());
    assert.equal(response.status, 400);
    assert.equal((await response.json()).error.type, "invalid_request_error");
    assert.equal(fake.attempts(), 1);
  });
});

Deno.test("an error body that is not in Anthropic's shape, or never ends, still gives the client one, naming its request", async (t) => {
  const cases: [string, () => Response, number, RegExp][] = [
    [
      "a proxy's JSON",
      () => Response.json({ message: "Bad gateway" }, { status: 502 }),
      502,
      /upstream answered 502: \{"message":"Bad gateway"\}/,
    ],
    [
      "an HTML page",
      () => new Response("<html>413</html>", { status: 413 }),
      413,
      /without a JSON error body/,
    ],
    [
      "a body that stalls",
      () => new Response(stallAfter([enc('{"type":"err')]), { status: 429 }),
      429,
      /without a JSON error body/,
    ],
  ];
  for (const [name, respond, status, message] of cases) {
    await t.step(name, async () => {
      const fake = faultyApp(() => Promise.resolve(respond()), {
        maxRetries: 0,
        streamPolicy: { idleTimeoutMs: 20 },
      });
      const response = await fake.app.request(post());
      assert.equal(response.status, status);
      const body = await response.json();
      assert.equal(body.type, "error");
      assert.equal(typeof body.error.type, "string");
      assert.match(body.error.message, message);
      // No id from the upstream: sluice's own, as on its answer's header.
      assert.equal(body.request_id, response.headers.get("x-sluice-request-id"));
    });
  }
  await t.step("the upstream's request-id names the body sluice writes for it", async () => {
    const headers = { "request-id": "req_upstream_1" };
    const fake = faultyApp(
      () => Promise.resolve(new Response("<html>500</html>", { status: 500, headers })),
      { maxRetries: 0 },
    );
    const response = await fake.app.request(post());
    assert.equal(response.status, 500);
    assert.equal((await response.json()).request_id, "req_upstream_1");
  });
  await t.step("an upstream body in the API's shape is passed on as it came", async () => {
    const fake = faultyApp(() =>
      Promise.resolve(Response.json({
        type: "error",
        error: { type: "overloaded_error", message: "x" },
        request_id: "req_in_body",
      }, { status: 529, headers: { "request-id": "req_header" } })), { maxRetries: 0 });
    const response = await fake.app.request(post());
    assert.equal((await response.json()).request_id, "req_in_body");
  });
});

Deno.test("the wait the upstream asks for is read like the SDK reads it and lowered to the cap", () => {
  const h = (init: Record<string, string>) => new Headers(init);
  assert.equal(requestedWaitMs(h({ "retry-after-ms": "250" })), 250);
  assert.equal(requestedWaitMs(h({ "retry-after": "3" })), 3000);
  assert.equal(requestedWaitMs(h({ "retry-after-ms": "40", "retry-after": "3" })), 40);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(requestedWaitMs(h({ "retry-after": "Thu, 01 Jan 2026 00:01:00 GMT" }), now), 60_000);
  assert.equal(requestedWaitMs(h({ "retry-after": "0" })), undefined);
  assert.equal(requestedWaitMs(h({ "retry-after": "soon" })), undefined);
  assert.equal(requestedWaitMs(h({})), undefined);

  const wait = (headers: Headers | undefined, retriesSoFar: number, random = () => 0.5) =>
    retryWaitMs({ headers, retriesSoFar, maxWaitMs: 500, random });
  assert.equal(wait(h({ "retry-after": "3600" }), 0), 500, "a long wait is lowered to the cap");
  assert.equal(wait(h({ "retry-after-ms": "40" }), 1), 40, "a short one is kept");
  // Without a request, the SDK's backoff: 0.5 s doubling, at most 8 s, less up to 25% jitter.
  assert.equal(wait(undefined, 0, () => 0), 500);
  assert.equal(wait(undefined, 2, () => 0), 2000);
  assert.equal(wait(undefined, 9, () => 0), 8000);
  assert.equal(wait(h({ "retry-after": "0" }), 1, () => 0.999), 1000 * (1 - 0.999 * 0.25));
});

Deno.test("which failures are retried follows the SDK: x-should-retry first, then 408, 409, 429 and 5xx", () => {
  const answer = (status: number, shouldRetryHeader?: string) =>
    new Response(null, {
      status,
      headers: shouldRetryHeader ? { "x-should-retry": shouldRetryHeader } : {},
    });
  for (const status of [408, 409, 429, 500, 502, 503, 529]) {
    assert.equal(shouldRetry(answer(status)), true, String(status));
  }
  for (const status of [400, 401, 403, 404, 413, 422]) {
    assert.equal(shouldRetry(answer(status)), false, String(status));
  }
  assert.equal(shouldRetry(answer(400, "true")), true, "the upstream asks for a retry");
  assert.equal(shouldRetry(answer(529, "false")), false, "the upstream forbids one");
});

Deno.test("a retry-after beyond the cap makes sluice wait only the cap, and the client still sees the upstream's value", async () => {
  // Observe the waits sluice asks the timer for (its sleep uses the global setTimeout).
  const realSetTimeout = globalThis.setTimeout;
  const waits: number[] = [];
  // The per-attempt limit (the attempt's timer, and the one for reading error bodies) and the
  // request body's read deadline are told apart by their sizes and left alone.
  const requestTimeoutMs = 987_654;
  const bodyDeadlineMs = testConfig().bodyTimeoutMs;
  globalThis.setTimeout = ((fn: () => void, ms?: number) => {
    if (ms !== undefined && ms > requestTimeoutMs - 1000) return realSetTimeout(fn, ms);
    if (ms === bodyDeadlineMs) return realSetTimeout(fn, ms);
    if (typeof ms === "number" && ms >= 1) waits.push(ms);
    return realSetTimeout(fn, ms !== undefined && ms >= 1 ? 0 : ms);
  }) as typeof setTimeout;
  try {
    const fake = faultyApp(
      () => Promise.resolve(errorJson(429, "rate_limit_error", { "retry-after": "3600" })),
      { retryMaxWaitMs: 25, timeoutMs: requestTimeoutMs },
    );
    const response = await fake.app.request(post());
    assert.equal(response.status, 429);
    assert.equal(response.headers.get("retry-after"), "3600");
    assert.equal(fake.attempts(), 3);
    assert.deepEqual(waits.filter((ms) => ms === 25).length, 2, `waits asked for: ${waits}`);
    assert.ok(waits.every((ms) => ms <= 25), `no wait above the cap: ${waits}`);
  } finally {
    globalThis.setTimeout = realSetTimeout;
  }
});

Deno.test("connection errors that outlast the retries become a 502 api_error", async () => {
  const fake = faultyApp(() => Promise.reject(new TypeError("connection refused")));
  const response = await fake.app.request(post());
  assert.equal(response.status, 502);
  const body = await response.json();
  assert.equal(body.type, "error");
  assert.equal(body.error.type, "api_error");
  assert.match(body.error.message, /could not connect/);
  assert.equal(body.request_id, response.headers.get("x-sluice-request-id"));
  assert.equal(fake.attempts(), 3);
});

Deno.test("an upstream that sends no headers within the first-byte limit is retried, then answered 504", async () => {
  const fake = faultyApp((_req, _attempt, signal) =>
    new Promise((_resolve, reject) => {
      signal.addEventListener("abort", () => reject(signal.reason), { once: true });
    }), { timeoutMs: 20, maxRetries: 1 });
  const response = await fake.app.request(post());
  assert.equal(response.status, 504);
  const body = await response.json();
  assert.equal(body.error.type, "timeout_error");
  assert.equal(body.request_id, response.headers.get("x-sluice-request-id"));
  assert.equal(fake.attempts(), 2);
  assert.ok(fake.signals.every((s) => s.aborted), "every timed-out attempt was aborted");
});

Deno.test("after bytes reached the client nothing is retried: a dropped connection ends the stream with an api_error event", async (t) => {
  const fixture = await readFixture("three-words.sse");
  const cases: Record<string, Uint8Array[]> = {
    "dropped between events": [firstEvents(fixture, 3)],
    "dropped inside an event": splitEvery(firstEvents(fixture, 3).subarray(0, -20), 64),
  };
  for (const [name, chunks] of Object.entries(cases)) {
    await t.step(name, async () => {
      const fake = faultyApp(() => Promise.resolve(sse(dropAfter(chunks))));
      const response = await fake.app.request(post());
      assert.equal(response.status, 200);
      const bytes = new Uint8Array(await response.arrayBuffer());
      const sent = chunks.reduce((n, c) => n + c.length, 0);
      assert.equal(dec(bytes.subarray(0, sent)), dec(chunks.reduce(concat)), "sent bytes kept");
      const events = decodeAll(bytes);
      const last = events.at(-1)!;
      assert.equal(last.event, "error");
      const error = JSON.parse(last.data);
      assert.equal(error.type, "error");
      assert.equal(error.error.type, "api_error");
      assert.match(error.error.message, /dropped mid-stream/);
      assert.equal(fake.attempts(), 1, "no retry after the first byte");
      const oracle = await sdkOracle([bytes]);
      if (name === "dropped between events") {
        assert.equal(oracle.error?.type, "api_error", "the SDK raises the error event");
      }
      const summary = await fake.summary();
      assert.equal(summary.outcome, "incomplete");
      assert.equal(summary.retries, 0);
    });
  }
});

Deno.test("a mid-stream error event is forwarded as is and nothing is retried", async () => {
  const fixture = await readFixture("overloaded-mid-stream.sse");
  const fake = faultyApp(() => Promise.resolve(sse(streamOf(splitEvery(fixture, 100)))));
  const response = await fake.app.request(post());
  assert.deepEqual(new Uint8Array(await response.arrayBuffer()), fixture);
  assert.equal(fake.attempts(), 1);
  assert.equal((await fake.summary()).outcome, "overloaded_error");
});

Deno.test("an upstream silent for longer than the idle timeout is cut with an api_error event and its request aborted", async () => {
  const fixture = await readFixture("three-words.sse");
  let cancelled = false;
  const fake = faultyApp(
    () => Promise.resolve(sse(stallAfter([firstEvents(fixture, 2)], () => (cancelled = true)))),
    { streamPolicy: { idleTimeoutMs: 30 } },
  );
  const response = await fake.app.request(post());
  const bytes = new Uint8Array(await response.arrayBuffer());
  const last = decodeAll(bytes).at(-1)!;
  assert.equal(last.event, "error");
  const error = JSON.parse(last.data).error;
  assert.equal(error.type, "api_error");
  assert.match(error.message, /sent nothing for 30 ms/);
  assert.equal(cancelled, true, "the upstream body was cancelled");
  assert.equal(fake.signals[0].aborted, true, "the upstream request was aborted");
  const summary = await fake.summary();
  assert.equal(summary.outcome, "incomplete");
  assert.equal(summary.usage.input_tokens > 0, true, "tokens seen so far are kept");
});

Deno.test("keep-alive comments fill the upstream's silences between events, never inside one", async (t) => {
  const clock = FakeTimers.install({ toFake: ["setTimeout", "clearTimeout", "performance"] });
  try {
    await t.step("silence at an event boundary gets a comment every interval", async () => {
      const { upstream, push, end } = controllable();
      const tapped = tapStream(upstream, hooks(), undefined, { keepAliveMs: 100 });
      const got = collect(tapped);
      push(enc("event: a\ndata: 1\n\n"));
      await clock.tickAsync(350);
      push(enc("event: b\ndata: 2\n\n"));
      end();
      await clock.runAllAsync();
      const text = dec((await got).reduce(concat));
      const comment = dec(KEEP_ALIVE_COMMENT);
      assert.equal(text.split(comment).length - 1, 3, "three comments in 350 ms");
      assert.equal(text.replaceAll(comment, ""), "event: a\ndata: 1\n\nevent: b\ndata: 2\n\n");
      assert.deepEqual(decodeAll(enc(text)).map((e) => e.data), ["1", "2"]);
    });
    await t.step("silence inside an event waits until the event is whole", async () => {
      const { upstream, push, end } = controllable();
      const tapped = tapStream(upstream, hooks(), undefined, { keepAliveMs: 100 });
      const got = collect(tapped);
      push(enc('event: a\ndata: {"par'));
      await clock.tickAsync(1000);
      push(enc('t":1}\n\n'));
      await clock.tickAsync(150);
      end();
      await clock.runAllAsync();
      const text = dec((await got).reduce(concat));
      assert.equal(text, `event: a\ndata: {"part":1}\n\n${dec(KEEP_ALIVE_COMMENT)}`);
    });
    await t.step("the idle timeout is not reset by keep-alives", async () => {
      const { upstream, push } = controllable();
      let failure: unknown;
      const tapped = tapStream(
        upstream,
        {
          ...hooks(),
          onError: (error) => {
            failure = error;
            return enc("event: error\ndata: {}\n\n");
          },
        },
        undefined,
        { keepAliveMs: 100, idleTimeoutMs: 450 },
      );
      const got = collect(tapped);
      push(enc("event: a\ndata: 1\n\n"));
      await clock.tickAsync(1000);
      const text = dec((await got).reduce(concat));
      assert.equal(text.split(dec(KEEP_ALIVE_COMMENT)).length - 1, 4);
      assert.ok(text.endsWith("event: error\ndata: {}\n\n"));
      assert.match(String(failure), /sent nothing for 450 ms/);
    });
  } finally {
    clock.uninstall();
  }
});

Deno.test("a stream with keep-alives gives the official SDK the same message as one without", async () => {
  const fixture = await readFixture("three-words.sse");
  const head = firstEvents(fixture, 3);
  const rest = fixture.subarray(head.length);
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(head);
      await released;
      controller.enqueue(rest);
      controller.close();
    },
  });
  const fake = faultyApp(() => Promise.resolve(sse(body)), { streamPolicy: { keepAliveMs: 5 } });
  const response = await fake.app.request(post());
  const chunks: Uint8Array[] = [];
  const comment = dec(KEEP_ALIVE_COMMENT);
  for await (const chunk of response.body!) {
    chunks.push(chunk);
    // Let the upstream go on once two keep-alives have been sent in its silence.
    if (chunks.map(dec).join("").split(comment).length - 1 >= 2) release();
  }
  const bytes = chunks.reduce(concat);
  assert.ok(dec(bytes).includes(comment));
  assert.equal(dec(bytes).replaceAll(comment, ""), dec(fixture));
  const [withComments, plain] = [await sdkOracle([bytes]), await sdkOracle([fixture])];
  assert.deepEqual(withComments.finalMessage, plain.finalMessage);
  assert.notEqual(plain.finalMessage, null);
  assert.equal((await fake.summary()).outcome, "ok");
});

Deno.test("a non-streamed answer that breaks off, stalls or is not JSON becomes a clear 5xx", async (t) => {
  const message = await readFixture("three-words.json");
  const json = (body: BodyInit | Uint8Array) =>
    new Response(body as BodyInit, { headers: { "content-type": "application/json" } });
  const cases: [string, () => Response, number, string, RegExp][] = [
    ["dropped", () => json(dropAfter([message.subarray(0, 40)])), 502, "api_error", /dropped/],
    [
      "silent",
      () => json(stallAfter([message.subarray(0, 40)])),
      504,
      "timeout_error",
      /within 30 ms/,
    ],
    [
      "HTML",
      () => new Response("<html>hi</html>", { status: 200 }),
      502,
      "api_error",
      /answered 200 with a body that is not a JSON/,
    ],
    [
      "no content",
      () => new Response(null, { status: 204 }),
      502,
      "api_error",
      /answered 204 with a body that is not a JSON/,
    ],
  ];
  for (const [name, respond, status, type, pattern] of cases) {
    await t.step(name, async () => {
      const fake = faultyApp(() => Promise.resolve(respond()), {
        streamPolicy: { idleTimeoutMs: 30 },
      });
      const response = await fake.app.request(post(false));
      assert.equal(response.status, status);
      const body = await response.json();
      assert.equal(body.type, "error");
      assert.equal(body.error.type, type);
      assert.match(body.error.message, pattern);
      assert.equal((await fake.summary()).outcome, "incomplete");
      // A body given up on has its upstream request aborted, not left reading.
      if (name === "silent") assert.equal(fake.signals.at(-1)!.aborted, true);
    });
  }
  for (const [name, respond, status, type, pattern] of cases.slice(0, 2)) {
    await t.step(`a forwarded call's JSON answer, ${name}`, async () => {
      const fake = faultyApp(() => Promise.resolve(respond()), {
        streamPolicy: { idleTimeoutMs: 30 },
      });
      const response = await fake.app.request("/v1/models");
      assert.equal(response.status, status);
      const body = await response.json();
      assert.equal(body.error.type, type);
      assert.match(body.error.message, pattern);
      if (name === "silent") assert.equal(fake.signals.at(-1)!.aborted, true);
    });
  }
  await t.step("a whole answer still passes", async () => {
    const fake = faultyApp(() => Promise.resolve(json(message)));
    const response = await fake.app.request(post(false));
    assert.equal(response.status, 200);
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), message);
  });
});

Deno.test("the upstream key never appears in a response, a log line or an error", async () => {
  const key = "sk-ant-api03-FAKE-server-key-0123456789";
  const lines: string[] = [];
  // No `secrets` given: the logger does not scrub, so sluice must never log the key at all.
  const logger = createLogger({ level: "debug", write: (_level, line) => lines.push(line) });
  const fixture = await readFixture("three-words.sse");
  const seenKeys: string[] = [];
  const scenarios: (() => Promise<Response>)[] = [
    // An upstream (or proxy) error that echoes the credential it was sent.
    () =>
      Promise.resolve(
        new Response(
          JSON.stringify({
            type: "error",
            error: { type: "authentication_error", message: `invalid x-api-key: ${key}` },
          }),
          { status: 401, headers: { "content-type": "application/json" } },
        ),
      ),
    () => Promise.resolve(errorJson(500, "api_error", { "retry-after-ms": "1" })),
    () => Promise.reject(new TypeError(`connection refused`)),
    () => Promise.resolve(sse(dropAfter([firstEvents(fixture, 2)]))),
    () => Promise.resolve(sse(stallAfter([firstEvents(fixture, 2)]))),
    () => Promise.resolve(new Response("<html>oops</html>")),
    () => Promise.resolve(sse(fixture)),
  ];
  for (const [i, scenario] of scenarios.entries()) {
    const upstream = createUpstream({
      mode: "live",
      apiKey: key,
      baseURL: "http://upstream.test",
      maxRetries: 1,
      streamPolicy: { idleTimeoutMs: 20 },
      fetch: (input, init) => {
        const request = new Request(input, init);
        seenKeys.push(request.headers.get("authorization") ?? request.headers.get("x-api-key")!);
        return scenario();
      },
    });
    const app = createApp({
      config: testConfig({ ANTHROPIC_API_KEY: key, SLUICE_LOG_LEVEL: "debug" }),
      upstream,
      logger,
    });
    for (const stream of [true, false]) {
      const response = await app.request(post(stream));
      const text = await response.text();
      assert.ok(response.status >= 200, `scenario ${i}`);
      assert.ok(!text.includes(key), `scenario ${i}: key in body ${text}`);
      response.headers.forEach((value, name) => {
        assert.ok(!value.includes(key), `scenario ${i}: key in header ${name}`);
      });
    }
  }
  assert.ok(seenKeys.some((value) => value.includes(key)), "the upstream was sent the key");
  assert.ok(lines.length > 0, "the faults were logged");
  for (const line of lines) assert.ok(!line.includes(key), `key in log line: ${line}`);
});

// --- small helpers -----------------------------------------------------------------------------

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function hooks() {
  return {
    onChunk: () => {},
    onClose: () => {},
    onCancel: () => {},
    onError: () => undefined,
  };
}

/** An upstream the test feeds by hand. */
function controllable() {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const upstream = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
  return {
    upstream,
    push: (chunk: Uint8Array) => controller.enqueue(chunk),
    end: () => controller.close(),
  };
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [enc("")];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

Deno.test("a canary key echoed by the upstream in an error body, a 200 body, a stream's events or a header never reaches a client, a log line or KV", async (t) => {
  const key = "sk-ant-api03-CANARY-0123456789abcdefghij";
  const leaked = (text: string) => text.includes("CANARY");
  const lines: string[] = [];
  // No `secrets` given: the logger does not scrub, so nothing may hand it the key.
  const logger = createLogger({ level: "debug", write: (_level, line) => lines.push(line) });
  const fixture = await readFixture("three-words.sse");
  const json = (body: unknown, status = 200, headers: Record<string, string> = {}) =>
    new Response(JSON.stringify(body), {
      status,
      headers: { "content-type": "application/json", ...headers },
    });
  // The key starts 263 characters into a proxy's JSON, so sluice's 300-character cut falls
  // inside it, after "CANARY".
  const straddling = { message: "x".repeat(263) + key };
  const scenarios: [string, () => Response][] = [
    ["an error body cut at 300 characters", () => json(straddling, 401)],
    [
      "an error in Anthropic's shape",
      () => json({ type: "error", error: { type: "authentication_error", message: key } }, 401),
    ],
    [
      "a 200 JSON body",
      () =>
        json({
          id: `msg_${key}`,
          type: "message",
          role: "assistant",
          model: "claude-sonnet-5-5",
          content: [{ type: "text", text: `your key is ${key}` }],
          stop_reason: "end_turn",
          usage: { input_tokens: 1, output_tokens: 1 },
        }),
    ],
    [
      "a text delta, the key split across two chunks",
      () => {
        const delta = enc(
          `event: content_block_delta\ndata: ${
            JSON.stringify({
              type: "content_block_delta",
              index: 0,
              delta: { type: "text_delta", text: `the key is ${key}.` },
            })
          }\n\n`,
        );
        const head = firstEvents(fixture, 3);
        const split = dec(delta).indexOf("CANARY") + 2; // inside the key, after "CA"
        const rest = fixture.subarray(head.length);
        return sse(
          new ReadableStream({
            start(controller) {
              controller.enqueue(head);
              controller.enqueue(delta.subarray(0, split));
              controller.enqueue(delta.subarray(split));
              controller.enqueue(rest);
              controller.close();
            },
          }),
        );
      },
    ],
    [
      "a mid-stream error event",
      () =>
        sse(concat(
          firstEvents(fixture, 2),
          enc(
            `event: error\ndata: ${
              JSON.stringify({ type: "error", error: { type: key, message: `bad ${key}` } })
            }\n\n`,
          ),
        )),
    ],
    [
      "the request-id and other headers",
      () =>
        sse(fixture, {
          "request-id": `req_${key}`,
          "anthropic-organization-id": key,
          "retry-after": key,
        }),
    ],
    [
      "a content type on a body that is not JSON",
      () =>
        new Response("<html>hi</html>", {
          headers: { "content-type": `text/html; key=${key}`, "request-id": `req_${key}` },
        }),
    ],
  ];
  const kv = await Deno.openKv(":memory:");
  const stats = createKvStats({ kv, logger, writeIntervalMs: 0 });
  const requests = [
    ["POST /v1/messages (not streamed)", () => post(false)],
    ["POST /v1/messages (streamed)", () => post(true)],
    [
      "POST /chat (plain text)",
      () =>
        new Request("http://sluice.test/chat", {
          method: "POST",
          headers: { "content-type": "application/json", accept: "text/plain" },
          body: JSON.stringify({ message: "hi" }),
        }),
    ],
    [
      "POST /chat (SSE)",
      () =>
        new Request("http://sluice.test/chat", {
          method: "POST",
          headers: { "content-type": "application/json", accept: "text/event-stream" },
          body: JSON.stringify({ message: "hi" }),
        }),
    ],
    ["GET /v1/models/:id", () => new Request("http://sluice.test/v1/models/claude-sonnet-5-5")],
  ] as const;
  try {
    for (const [name, scenario] of scenarios) {
      await t.step(name, async () => {
        const upstream = createUpstream({
          mode: "live",
          apiKey: key,
          baseURL: "http://upstream.test",
          maxRetries: 0,
          fetch: () => Promise.resolve(scenario()),
        });
        const app = createApp({
          config: testConfig({ ANTHROPIC_API_KEY: key, SLUICE_LOG_LEVEL: "debug" }),
          upstream,
          logger,
          stats,
        });
        for (const [label, request] of requests) {
          const response = await app.request(request());
          const text = await response.text();
          response.headers.forEach((value, header) => {
            assert.ok(!leaked(value), `${label}: key in header ${header}: ${value}`);
          });
          // Streamed answers too: the key is replaced in a stream's bytes as they pass.
          assert.ok(!leaked(text), `${label}: key in body ${text}`);
        }
      });
    }
    await new Promise((r) => setTimeout(r, 20)); // the stats records, off the response path
    await stats.flush();
    const app = createApp({
      config: testConfig(),
      upstream: createUpstream({ mode: "replay", apiKey: "replay", baseURL: "http://replay.test" }),
      logger: silentLogger,
      stats,
    });
    const recent = await (await app.request("/stats/recent?limit=1000")).text();
    assert.ok(recent.includes("/v1/messages"), "the requests were recorded");
    assert.ok(!leaked(recent), `key in /stats/recent: ${recent}`);
    for await (const entry of kv.list({ prefix: [] })) {
      const stored = JSON.stringify(
        [entry.key, entry.value],
        (_k, v) => (typeof v === "bigint" ? String(v) : v instanceof Uint8Array ? dec(v) : v),
      );
      assert.ok(!leaked(stored), `key in KV: ${stored}`);
    }
    assert.ok(lines.length > 0, "the faults were logged");
    for (const line of lines) assert.ok(!leaked(line), `key in log line: ${line}`);
  } finally {
    kv.close();
  }
});

Deno.test("retries are counted for attempts that got no answer: stalled, refused, or garbage instead of HTTP", async (t) => {
  await t.step("no headers within the first-byte limit", async () => {
    const fake = faultyApp((_req, _attempt, signal) =>
      new Promise((_resolve, reject) => {
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      }), { timeoutMs: 20, maxRetries: 2, retryMaxWaitMs: 1 });
    const response = await fake.app.request(post(false));
    assert.equal(response.status, 504);
    await response.body?.cancel();
    assert.equal(fake.attempts(), 3);
    assert.equal((await fake.summary()).retries, 2);
  });
  await t.step("a connection refused every time", async () => {
    const fake = faultyApp(() => Promise.reject(new TypeError("connection refused")), {
      maxRetries: 2,
      retryMaxWaitMs: 1,
    });
    const response = await fake.app.request(post(true));
    assert.equal(response.status, 502);
    await response.body?.cancel();
    assert.equal(fake.attempts(), 3);
    assert.equal((await fake.summary()).retries, 2);
  });
  await t.step("a server on a real socket that answers garbage", async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    let connections = 0;
    const serving = (async () => {
      for await (const conn of listener) {
        connections++;
        await conn.write(enc("NOT HTTP AT ALL\r\n\r\n")).catch(() => {});
        conn.close();
      }
    })();
    try {
      const stats = memorySink();
      const { port } = listener.addr as Deno.NetAddr;
      const upstream = createUpstream({
        mode: "live",
        apiKey: "sk-ant-test-key",
        baseURL: `http://127.0.0.1:${port}`,
        maxRetries: 2,
        retryMaxWaitMs: 1,
      });
      const app = createApp({ config: testConfig(), upstream, logger: silentLogger, stats });
      const response = await app.request(post(false));
      assert.equal(response.status, 502);
      await response.body?.cancel();
      for (let i = 0; i < 200 && stats.records.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 1));
      }
      assert.equal(connections, 3, "three attempts reached the socket");
      assert.equal(stats.records[0].retries, 2);
    } finally {
      listener.close();
      await serving.catch(() => {});
    }
  });
});
