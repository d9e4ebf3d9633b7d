import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { createLifecycle } from "../lib/http/shutdown.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import {
  projectFixtures,
  readFixture,
  replayApp,
  sdkOracle,
  sseResponse,
  testConfig,
} from "./helpers.ts";

const body = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    model: "claude-test",
    max_tokens: 64,
    messages: [{ role: "user", content: "hi" }],
    ...extra,
  });

const post = (payload: string, headers: Record<string, string> = {}) =>
  new Request("http://sluice.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: payload,
  });

/** An app whose upstream is a fake fetch that records what it was sent. */
function appWithFakeFetch(
  respond: (request: Request) => Response | Promise<Response>,
  env: Record<string, string> = {},
) {
  const seen: Request[] = [];
  const stats = memorySink();
  const upstream = createUpstream({
    mode: "live",
    apiKey: "sk-ant-server-secret",
    baseURL: "http://upstream.test",
    maxRetries: 0,
    fetch: (input, init) => {
      const request = new Request(input, init);
      seen.push(request.clone());
      return Promise.resolve(respond(request));
    },
  });
  const app = createApp({
    config: testConfig({ ANTHROPIC_API_KEY: "sk-ant-server-secret", ...env }),
    upstream,
    logger: silentLogger,
    stats,
  });
  return { app, seen, stats };
}

/** The model a recorded stream's `message_start` names (replay echoes the requested one). */
function recordedModel(sse: Uint8Array): string {
  const start = decodeAll(sse).find((event) => event.event === "message_start")!;
  return JSON.parse(start.data).message.model;
}

const dec = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

Deno.test("streamed fixtures reach the client byte for byte, with SSE headers", async (t) => {
  const app = await replayApp();
  const set = await projectFixtures();
  for (const fixture of set.fixtures.values()) {
    if (!fixture.sse) continue;
    await t.step(fixture.name, async () => {
      const response = await app.request(
        post(body({ stream: true, model: recordedModel(fixture.sse!) }), {
          "x-sluice-fixture": fixture.name,
        }),
      );
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type")!, /^text\/event-stream/);
      assert.equal(response.headers.get("cache-control"), "no-cache, no-transform");
      assert.equal(response.headers.get("x-accel-buffering"), "no");
      assert.match(response.headers.get("request-id")!, /^req_/);
      const bytes = new Uint8Array(await response.arrayBuffer());
      // Every byte of the recording, in order; sluice adds bytes only after the last one, and
      // only to a stream that ended without message_stop or an error event of its own.
      assert.deepEqual(bytes.subarray(0, fixture.sse!.length), fixture.sse);
      const recorded = decodeAll(fixture.sse!).map((e) => e.event);
      const added = dec(bytes.subarray(fixture.sse!.length));
      if (recorded.includes("message_stop") || recorded.includes("error")) {
        assert.equal(added, "");
      } else {
        const last = decodeAll(bytes).at(-1)!;
        assert.equal(last.event, "error");
        assert.equal(JSON.parse(last.data).error.type, "api_error");
        assert.match(added, /^\n\nevent: error\n/, "a blank line first ends the cut event");
      }
    });
  }
});

Deno.test("every answer carries sluice's request id, the same one its own errors name", async (t) => {
  const app = await replayApp();
  const uuid = /^[0-9a-f-]{36}$/;
  const cases: [string, Request | string, number][] = [
    ["a streamed message", post(body({ stream: true })), 200],
    ["a whole message", post(body()), 200],
    [
      "/chat",
      new Request("http://sluice.test/chat", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ message: "hi", stream: false }),
      }),
      200,
    ],
    ["health", "/health", 200],
    ["malformed JSON (sluice's own 400)", post("{"), 400],
    ["no route (sluice's own 404)", "/nothing-here", 404],
  ];
  const ids = new Set<string>();
  for (const [name, request, status] of cases) {
    await t.step(name, async () => {
      const response = await app.request(request);
      assert.equal(response.status, status);
      const id = response.headers.get("x-sluice-request-id");
      assert.match(id ?? "", uuid);
      ids.add(id!);
      const text = await response.text();
      if (status >= 400) assert.equal(JSON.parse(text).request_id, id);
    });
  }
  assert.equal(ids.size, cases.length, "one id per request");
  await t.step("a caller's own id is kept", async () => {
    const response = await app.request(post(body(), { "x-sluice-request-id": "trace-42" }));
    await response.body?.cancel();
    assert.equal(response.headers.get("x-sluice-request-id"), "trace-42");
  });
});

Deno.test("a replayed cut connection ends like a dropped upstream: an api_error event, recorded as incomplete", async () => {
  const stats = memorySink();
  const app = await replayApp({ stats });
  const response = await app.request(
    post(body({ stream: true, messages: [{ role: "user", content: "[fixture:connection-cut]" }] })),
  );
  const last = decodeAll(new Uint8Array(await response.arrayBuffer())).at(-1)!;
  assert.equal(last.event, "error");
  assert.match(JSON.parse(last.data).error.message, /dropped mid-stream/);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(stats.records[0].outcome, "incomplete");
  const whole = await app.request(
    post(body({ messages: [{ role: "user", content: "[fixture:connection-cut]" }] })),
  );
  assert.equal(whole.status, 502, "without streaming: a 502, never a 500");
  const error = await whole.json();
  assert.equal(error.type, "error");
  assert.equal(error.error.type, "api_error");
});

Deno.test("an upstream stream that closes cleanly without message_stop ends with an api_error event after its last byte", async (t) => {
  const whole = await readFixture("three-words.sse");
  const text = dec(whole);
  const cases: Record<string, string> = {
    "between events": text.slice(0, text.indexOf("event: message_stop")),
    "inside an event": text.slice(0, text.indexOf("event: content_block_stop") + 30),
    "with no events at all": "",
  };
  for (const [name, sent] of Object.entries(cases)) {
    await t.step(name, async () => {
      const bytes = new TextEncoder().encode(sent);
      const { app, stats } = appWithFakeFetch(() => sseResponse(bytes, { chunkSize: 17 }));
      const response = await app.request(post(body({ stream: true })));
      const received = new Uint8Array(await response.arrayBuffer());
      assert.deepEqual(received.subarray(0, bytes.length), bytes, "the upstream's bytes first");
      const last = decodeAll(received).at(-1)!;
      assert.equal(last.event, "error");
      const error = JSON.parse(last.data);
      assert.equal(error.error.type, "api_error");
      assert.match(error.error.message, /without message_stop; the answer is incomplete/);
      assert.equal(decodeAll(received).filter((e) => e.event === "error").length, 1);
      const oracle = await sdkOracle([received]);
      assert.ok(oracle.error, "the official SDK raises an error instead of a truncated message");
      await new Promise((r) => setTimeout(r, 0));
      assert.equal(stats.records[0].outcome, "incomplete");
    });
  }
  await t.step("a complete stream gets nothing added", async () => {
    const { app } = appWithFakeFetch(() => sseResponse(whole, { chunkSize: 17 }));
    const response = await app.request(post(body({ stream: true })));
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), whole);
  });
});

Deno.test("the upstream's chunks are forwarded as they arrive, not re-framed", async () => {
  const bytes = await readFixture("essay.sse");
  const { app } = appWithFakeFetch(() => sseResponse(bytes, { chunkSize: 7 }));
  const response = await app.request(post(body({ stream: true })));
  const sizes: number[] = [];
  for await (const chunk of response.body!) sizes.push(chunk.length);
  assert.equal(sizes.reduce((a, b) => a + b, 0), bytes.length);
  assert.ok(sizes.every((n) => n <= 7), "no chunk was merged with another");
});

Deno.test("the request body goes upstream unchanged, with the server's key and not the caller's", async () => {
  const payload = body({ stream: false, temperature: 0, metadata: { user_id: "u1" } }).replace(
    "{",
    "{ ",
  );
  const { app, seen } = appWithFakeFetch(() => Response.json({ ok: true }));
  await app.request(post(payload, { authorization: "Bearer caller-gateway-key" }));
  assert.equal(seen.length, 1);
  assert.equal(await seen[0].text(), payload);
  assert.equal(seen[0].headers.get("authorization"), "Bearer sk-ant-server-secret");
  assert.equal(seen[0].headers.get("x-api-key"), null);
  assert.equal(new URL(seen[0].url).pathname, "/v1/messages");
});

Deno.test("a caller using x-api-key gets the server's key sent as x-api-key, like SDK 0.x", async () => {
  const { app, seen } = appWithFakeFetch(() => Response.json({ ok: true }));
  await app.request(post(body(), { "x-api-key": "caller-key", "anthropic-version": "2023-06-01" }));
  assert.equal(seen[0].headers.get("x-api-key"), "sk-ant-server-secret");
  assert.equal(seen[0].headers.get("authorization"), null);
  assert.equal(seen[0].headers.get("anthropic-version"), "2023-06-01");
});

Deno.test("anthropic-version and anthropic-beta are forwarded verbatim", async () => {
  const { app, seen } = appWithFakeFetch(() => Response.json({ ok: true }));
  await app.request(
    post(body(), {
      "anthropic-version": "2026-10-21",
      "anthropic-beta": "compact-2026-01-12,fine-grained-tool-streaming-2025-05-14",
    }),
  );
  assert.equal(seen[0].headers.get("anthropic-version"), "2026-10-21");
  assert.equal(
    seen[0].headers.get("anthropic-beta"),
    "compact-2026-01-12,fine-grained-tool-streaming-2025-05-14",
  );
});

Deno.test("a non-streaming answer comes back with the upstream's status and body unchanged", async () => {
  const json = await Deno.readTextFile(new URL("../fixtures/essay.json", import.meta.url));
  const { app, stats } = appWithFakeFetch(() =>
    new Response(json, { headers: { "content-type": "application/json", "request-id": "req_x" } })
  );
  const response = await app.request(post(body()));
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("request-id"), "req_x");
  assert.equal(await response.text(), json);
  await new Promise((r) => setTimeout(r, 0));
  const parsed = JSON.parse(json);
  assert.equal(stats.records[0].usage.output_tokens, parsed.usage.output_tokens);
  assert.equal(stats.records[0].streaming, false);
  assert.equal(stats.records[0].outcome, "ok");
});

Deno.test("upstream HTTP errors pass through with their status, body and retry headers", async (t) => {
  const set = await projectFixtures();
  for (const name of ["rate-limited", "overloaded", "invalid-request"]) {
    await t.step(name, async () => {
      const fixture = set.fixtures.get(name)!.http!;
      const { app } = appWithFakeFetch(() =>
        Response.json(fixture.body, { status: fixture.status, headers: fixture.headers })
      );
      const response = await app.request(post(body({ stream: true })));
      assert.equal(response.status, fixture.status);
      assert.deepEqual(await response.json(), fixture.body);
      for (const [key, value] of Object.entries(fixture.headers)) {
        if (/^(request-id|retry-after|x-should-retry|anthropic-ratelimit-)/.test(key)) {
          assert.equal(response.headers.get(key), value, key);
        }
      }
    });
  }
});

Deno.test("an upstream that cannot be reached is a 502 in Anthropic's shape", async () => {
  const { app } = appWithFakeFetch(() => {
    throw new TypeError("connection refused");
  });
  const response = await app.request(post(body({ stream: true })));
  assert.equal(response.status, 502);
  const json = await response.json();
  assert.equal(json.type, "error");
  assert.equal(json.error.type, "api_error");
});

Deno.test("a mid-stream error event is forwarded as is and recorded as the request's outcome", async () => {
  const bytes = await readFixture("overloaded-mid-stream.sse");
  const { app, stats } = appWithFakeFetch(() => sseResponse(bytes, { chunkSize: 11 }));
  const response = await app.request(post(body({ stream: true })));
  assert.deepEqual(new Uint8Array(await response.arrayBuffer()), bytes);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(stats.records[0].outcome, "overloaded_error");
  assert.equal(stats.records[0].events.error, 1);
});

Deno.test("bad requests get a 400 in Anthropic's error shape naming the problem", async (t) => {
  const app = await replayApp();
  const cases: [string, Request, RegExp][] = [
    ["invalid JSON", post("{"), /JSON/i],
    [
      "wrong content type",
      new Request("http://s/v1/messages", { method: "POST", body: body() }),
      /content-type/,
    ],
    ["a model that is not a string", post(body({ model: 7 })), /model/],
    ["a stream flag that is not a boolean", post(body({ stream: "yes" })), /stream/],
    ["a JSON array", post("[1,2]"), /body|expected object/],
  ];
  for (const [name, request, message] of cases) {
    await t.step(name, async () => {
      const response = await app.request(request);
      assert.equal(response.status, 400);
      const json = await response.json();
      assert.equal(json.type, "error");
      assert.equal(json.error.type, "invalid_request_error");
      assert.match(json.error.message, message);
    });
  }
});

Deno.test("with gateway keys configured, a missing or wrong key is a 401 and a right one passes", async () => {
  const { app } = appWithFakeFetch(() => Response.json({ ok: true }), {
    SLUICE_API_KEYS: "alpha-key, beta-key",
  });
  const missing = await app.request(post(body()));
  assert.equal(missing.status, 401);
  assert.equal((await missing.json()).error.type, "authentication_error");
  const wrong = await app.request(post(body(), { "x-api-key": "alpha-kez" }));
  assert.equal(wrong.status, 401);
  await wrong.body?.cancel();
  const bearer = await app.request(post(body(), { authorization: "Bearer beta-key" }));
  assert.equal(bearer.status, 200);
  await bearer.body?.cancel();
  const xApiKey = await app.request(post(body(), { "x-api-key": "alpha-key" }));
  assert.equal(xApiKey.status, 200);
  await xApiKey.body?.cancel();
});

Deno.test("unknown routes and methods are 404s in Anthropic's error shape", async () => {
  const app = await replayApp();
  for (const request of [new Request("http://s/nope"), new Request("http://s/v1/messages")]) {
    const response = await app.request(request);
    assert.equal(response.status, 404);
    assert.equal((await response.json()).error.type, "not_found_error");
  }
});

Deno.test("health answers without a key and names the upstream mode", async () => {
  const { app } = appWithFakeFetch(() => Response.json({}), { SLUICE_API_KEYS: "k" });
  const response = await app.request("/health");
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), { status: "ok", upstream: "live" });
});

Deno.test("a client that leaves before the answer starts aborts the upstream call", async () => {
  let upstreamAborted!: () => void;
  const aborted = new Promise<void>((resolve) => (upstreamAborted = resolve));
  let upstreamCalled!: () => void;
  const called = new Promise<void>((resolve) => (upstreamCalled = resolve));
  // An upstream that is still thinking: it answers only when its request is aborted.
  const { app, stats } = appWithFakeFetch((upstreamRequest) =>
    new Promise((_resolve, reject) => {
      upstreamCalled();
      upstreamRequest.signal.addEventListener("abort", () => {
        upstreamAborted();
        reject(upstreamRequest.signal.reason);
      });
    })
  );
  const client = new AbortController();
  const request = new Request("http://sluice.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: body(),
    signal: client.signal,
  });
  const pending = app.request(request);
  await called;
  client.abort();
  await aborted;
  const response = await pending;
  await response.body?.cancel();
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(stats.records[0]?.outcome, "client_aborted");
});

Deno.test("health answers 200 until shutdown begins, then 503 draining", async () => {
  const lifecycle = createLifecycle();
  const app = await replayApp({ lifecycle });
  assert.equal((await app.request("/health")).status, 200);
  lifecycle.beginDrain();
  const response = await app.request("/health");
  assert.equal(response.status, 503);
  assert.equal((await response.json()).status, "draining");
});
