/**
 * Keys and limits: per-key requests per minute and requests in flight (held in KV, shared by
 * every app on the same KV), gateway keys, loopback-only serving in keyless live mode, the
 * Deploy refusal, CORS and secure headers.
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { manualClock } from "../lib/clock.ts";
import { ConfigError, parseConfig } from "../lib/config.ts";
import { createLimiter, kvLimitStore } from "../lib/http/limits.ts";
import { isLoopback } from "../lib/http/local_only.ts";
import { silentLogger } from "../lib/log.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { answeringUpstream, readFixture, replayApp, testConfig } from "./helpers.ts";

const body = JSON.stringify({
  model: "claude-test",
  max_tokens: 16,
  stream: true,
  messages: [{ role: "user", content: "hi" }],
});

const post = (key: string, extra: Record<string, string> = {}) =>
  new Request("http://sluice.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": key, ...extra },
    body,
  });

/**
 * An upstream whose streams send their first event and then wait until `releaseAll()`, so
 * tests can hold streams open.
 */
async function heldUpstream() {
  const fixture = await readFixture("three-words.sse");
  const waiting: (() => void)[] = [];
  const upstream = createUpstream({
    mode: "live",
    apiKey: "sk-ant-test",
    baseURL: "http://upstream.test",
    maxRetries: 0,
    fetch: () => {
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      waiting.push(release);
      const body = new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(fixture.subarray(0, 10));
          await released;
          controller.enqueue(fixture.subarray(10));
          controller.close();
        },
      });
      return Promise.resolve(
        new Response(body, { headers: { "content-type": "text/event-stream" } }),
      );
    },
  });
  return { upstream, releaseAll: () => waiting.splice(0).forEach((release) => release()) };
}

async function withKv(fn: (kv: Deno.Kv) => Promise<void>) {
  const kv = await Deno.openKv(":memory:");
  try {
    await fn(kv);
  } finally {
    kv.close();
  }
}

async function assertRateLimited(response: Response, message: RegExp) {
  assert.equal(response.status, 429);
  const error = await response.json();
  assert.equal(error.type, "error");
  assert.equal(error.error.type, "rate_limit_error");
  assert.match(error.error.message, message);
  return {
    retryAfter: Number(response.headers.get("retry-after")),
    retryAfterMs: Number(response.headers.get("retry-after-ms")),
  };
}

Deno.test("over the per-minute limit a key gets 429 rate_limit_error with retry-after, other keys do not", async () => {
  await withKv(async (kv) => {
    const clock = manualClock(Date.parse("2026-01-01T00:00:10Z"));
    const { upstream, releaseAll } = await heldUpstream();
    const app = createApp({
      config: testConfig({ SLUICE_RATE_LIMIT_RPM: "3" }),
      upstream,
      logger: silentLogger,
      kv,
      clock,
    });
    const drain = async (response: Response) => {
      releaseAll();
      await response.arrayBuffer();
    };
    for (let i = 0; i < 3; i++) {
      const response = await app.request(post("key-a"));
      assert.equal(response.status, 200, `request ${i + 1} of 3`);
      await drain(response);
    }
    const refused = await assertRateLimited(
      await app.request(post("key-a")),
      /3 requests per minute/,
    );
    assert.equal(refused.retryAfter, 50, "seconds left in the minute");
    assert.equal(refused.retryAfterMs, 50_000);

    const other = await app.request(post("key-b"));
    assert.equal(other.status, 200, "another key has its own budget");
    await drain(other);

    clock.advance(50_000);
    const later = await app.request(post("key-a"));
    assert.equal(later.status, 200, "a new minute, a new budget");
    await drain(later);
  });
});

Deno.test("two apps on one KV share each key's budget once they have reconciled, as isolates do", async () => {
  await withKv(async (kv) => {
    const clock = manualClock(Date.parse("2026-01-01T00:00:00Z"));
    const { upstream, releaseAll } = await heldUpstream();
    const config = testConfig({ SLUICE_RATE_LIMIT_RPM: "4", SLUICE_MAX_CONCURRENT_STREAMS: "2" });
    const limiters = [0, 1].map((i) =>
      createLimiter({
        store: kvLimitStore(kv),
        rpm: 4,
        maxConcurrent: 2,
        clock,
        instanceId: `isolate-${i}`,
      })
    );
    // Each app answers from its own memory; what the other holds arrives with a reconcile.
    const reconcile = () => Promise.all(limiters.map((l) => l.sync()));
    const [a, b] = limiters.map((limiter) =>
      createApp({ config, upstream, logger: silentLogger, kv, clock, limiter })
    );
    const first = await a.request(post("shared"));
    const second = await b.request(post("shared"));
    assert.deepEqual([first.status, second.status], [200, 200]);
    await reconcile();
    await reconcile(); // both have published, then both have read
    await assertRateLimited(await a.request(post("shared")), /already in flight/);
    releaseAll();
    await first.arrayBuffer();
    await second.arrayBuffer();
    assert.equal(limiters[0].held() + limiters[1].held(), 0, "both slots came back");
    await reconcile();
    await reconcile();
    const third = await b.request(post("shared"));
    assert.equal(third.status, 200, "slots came back once the streams ended");
    releaseAll();
    await third.arrayBuffer();
    await reconcile();
    await reconcile();
    // Requests so far: 2 + 1 refused + 1 = 4, the per-minute budget, counted over both apps.
    await assertRateLimited(await a.request(post("shared")), /requests per minute/);
  });
});

Deno.test("before isolates reconcile, each answers from its own memory: the documented overshoot", async () => {
  await withKv(async (kv) => {
    const clock = manualClock(Date.parse("2026-01-01T00:00:00Z"));
    const options = { store: kvLimitStore(kv), rpm: 1, maxConcurrent: 0, clock };
    const [a, b] = [createLimiter(options), createLimiter(options)];
    assert.equal(a.take("k").ok, true);
    assert.equal(b.take("k").ok, true, "b had not heard of a's request yet");
    await Promise.all([a.sync(), b.sync()]);
    await Promise.all([a.sync(), b.sync()]);
    assert.equal(a.take("k").ok, false, "after a reconcile each sees the other's count");
    assert.equal(b.take("k").ok, false);
  });
});

Deno.test("a key's streams in flight are capped, and a slot frees when a stream ends or its client leaves", async () => {
  await withKv(async (kv) => {
    const { upstream, releaseAll } = await heldUpstream();
    const app = createApp({
      config: testConfig({ SLUICE_MAX_CONCURRENT_STREAMS: "2" }),
      upstream,
      logger: silentLogger,
      kv,
    });
    const one = await app.request(post("k"));
    const two = await app.request(post("k"));
    assert.deepEqual([one.status, two.status], [200, 200]);
    const refused = await assertRateLimited(await app.request(post("k")), /2 requests are already/);
    assert.ok(refused.retryAfter >= 1);

    await one.body!.cancel(); // the client leaves
    const afterCancel = await retryUntilAdmitted(() => app.request(post("k")));
    assert.equal(afterCancel.status, 200, "the cancelled stream's slot came back");
    await assertRateLimited(await app.request(post("k")), /already in flight/);

    releaseAll();
    await two.arrayBuffer(); // read to the end
    await afterCancel.arrayBuffer();
    const afterEnd = await retryUntilAdmitted(() => app.request(post("k")));
    assert.equal(afterEnd.status, 200, "finished streams' slots came back");
    releaseAll();
    await afterEnd.arrayBuffer();
  });
});

Deno.test("a whole answer gives its slot back once it is made, before the client reads its body", async (t) => {
  const message = new TextEncoder().encode(JSON.stringify({
    id: "msg_1",
    type: "message",
    role: "assistant",
    model: "claude-test",
    content: [{ type: "text", text: "hi" }],
    stop_reason: "end_turn",
    usage: { input_tokens: 1, output_tokens: 1 },
  }));
  const upstream = answeringUpstream(message, "application/json");
  const app = createApp({
    config: testConfig({ SLUICE_MAX_CONCURRENT_STREAMS: "1" }),
    upstream,
    logger: silentLogger,
  });
  const whole = (path: string) =>
    new Request(`http://sluice.test${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": "k" },
      body: path === "/chat"
        ? JSON.stringify({ message: "hi", stream: false })
        : JSON.stringify({ ...JSON.parse(body), stream: false }),
    });
  for (const path of ["/v1/messages", "/v1/messages/count_tokens", "/chat"]) {
    await t.step(path, async () => {
      // One slot: each answer is left unread while the next request comes.
      const first = await app.request(whole(path));
      const second = await app.request(whole(path));
      assert.deepEqual([first.status, second.status], [200, 200]);
      assert.equal((await first.json()).type, path === "/chat" ? "chat" : "message");
      await second.arrayBuffer();
    });
  }
});

/** Slots come back asynchronously (a KV write): ask again a few times. */
async function retryUntilAdmitted(
  send: () => Response | Promise<Response>,
): Promise<Response> {
  for (let i = 0; i < 100; i++) {
    const response = await send();
    if (response.status !== 429) return response;
    await response.body?.cancel();
    await new Promise((r) => setTimeout(r, 2));
  }
  return await send();
}

Deno.test("requests racing for a key's slots never get more than the cap", async () => {
  await withKv(async (kv) => {
    const { upstream, releaseAll } = await heldUpstream();
    const app = createApp({
      config: testConfig({ SLUICE_MAX_CONCURRENT_STREAMS: "5" }),
      upstream,
      logger: silentLogger,
      kv,
    });
    const responses = await Promise.all(
      Array.from({ length: 30 }, () => app.request(post("racer"))),
    );
    const admitted = responses.filter((r) => r.status === 200);
    const refused = responses.filter((r) => r.status === 429);
    assert.equal(admitted.length, 5);
    assert.equal(refused.length, 25);
    releaseAll();
    await Promise.all(responses.map((r) => r.arrayBuffer()));
  });
});

Deno.test("the slots of an isolate that died lapse after the lease time", async () => {
  await withKv(async (kv) => {
    const clock = manualClock(1_000_000);
    const options = {
      store: kvLimitStore(kv),
      rpm: 0,
      maxConcurrent: 1,
      clock,
      leaseTtlMs: 60_000,
    };
    const crashed = createLimiter({ ...options, instanceId: "crashed" });
    const survivor = createLimiter({ ...options, instanceId: "survivor" });
    const held = crashed.acquire("k");
    assert.equal(held.ok, true);
    await crashed.sync(); // its share is published; it renews nothing any more
    await survivor.sync(["k"]);
    assert.equal(survivor.acquire("k").ok, false, "the slot is taken");
    clock.advance(60_001);
    await survivor.sync(["k"]);
    const taken = survivor.acquire("k");
    assert.equal(taken.ok, true, "its share lapsed");
    survivor.release(taken.ok ? taken.value : null);
    crashed.release(held.ok ? held.value : null); // stops its renewal timer
    assert.equal(crashed.held() + survivor.held(), 0);
  });
});

Deno.test("with SLUICE_API_KEYS set every endpoint but health needs a valid key", async (t) => {
  const { upstream, releaseAll } = await heldUpstream();
  const app = createApp({
    config: testConfig({ SLUICE_API_KEYS: "good-key,other-key" }),
    upstream,
    logger: silentLogger,
  });
  await t.step("health is open", async () => {
    assert.equal((await app.request("/health")).status, 200);
  });
  for (const [method, path] of [["POST", "/v1/messages"], ["POST", "/chat"], ["GET", "/nope"]]) {
    await t.step(`${method} ${path} without a key or with a wrong one is 401`, async () => {
      const attempts: Record<string, string>[] = [
        {},
        { "x-api-key": "good-key-but-longer" },
        { "x-api-key": "" },
        { authorization: "Bearer good-ke" },
      ];
      for (const headers of attempts) {
        const response = await app.request(path, {
          method,
          headers,
          body: method === "POST" ? body : undefined,
        });
        assert.equal(response.status, 401);
        assert.equal((await response.json()).error.type, "authentication_error");
      }
    });
  }
  await t.step("either header carries a valid key", async () => {
    const valid: Record<string, string>[] = [
      { "x-api-key": "good-key" },
      { authorization: "Bearer other-key" },
    ];
    for (const headers of valid) {
      const response = await app.request(
        new Request("http://sluice.test/v1/messages", {
          method: "POST",
          headers: { "content-type": "application/json", ...headers },
          body,
        }),
      );
      assert.equal(response.status, 200);
      releaseAll();
      await response.arrayBuffer();
    }
  });
});

Deno.test("loopback addresses are told from the others", () => {
  for (const host of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1"]) {
    assert.equal(isLoopback(host), true, host);
  }
  for (
    const host of [
      "10.0.0.1",
      "192.168.1.5",
      "203.0.113.9",
      "::ffff:10.0.0.1",
      "fe80::1",
      "localhost.evil",
      "1127.0.0.1",
    ]
  ) {
    assert.equal(isLoopback(host), false, host);
  }
});

Deno.test("in live mode without gateway keys only callers on this machine are answered", async (t) => {
  const { upstream, releaseAll } = await heldUpstream();
  const live = testConfig({ ANTHROPIC_API_KEY: "sk-ant-test" });
  assert.equal(live.upstream, "live");
  const app = createApp({ config: live, upstream, logger: silentLogger });
  const from = (hostname: string) => ({ remoteAddr: { transport: "tcp", hostname, port: 40000 } });
  for (const hostname of ["203.0.113.9", "10.1.2.3", "::ffff:192.168.0.4"]) {
    await t.step(`${hostname} is refused with 403`, async () => {
      const response = await app.fetch(post("any"), from(hostname));
      assert.equal(response.status, 403);
      const error = await response.json();
      assert.equal(error.error.type, "permission_error");
      assert.match(error.error.message, /SLUICE_API_KEYS/);
    });
  }
  for (const hostname of ["127.0.0.1", "::1"]) {
    await t.step(`${hostname} is served`, async () => {
      const response = await app.fetch(post("any"), from(hostname));
      assert.equal(response.status, 200);
      releaseAll();
      await response.arrayBuffer();
    });
  }
  await t.step("with gateway keys, remote callers with a key are served", async () => {
    const keyed = createApp({
      config: testConfig({ ANTHROPIC_API_KEY: "sk-ant-test", SLUICE_API_KEYS: "k1" }),
      upstream,
      logger: silentLogger,
    });
    const response = await keyed.fetch(post("k1"), from("203.0.113.9"));
    assert.equal(response.status, 200);
    releaseAll();
    await response.arrayBuffer();
  });
  await t.step("a real socket passes the caller's address through Deno.serve", async () => {
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
    try {
      const response = await fetch(`http://127.0.0.1:${server.addr.port}/health`);
      assert.equal(response.status, 200);
      await response.body?.cancel();
    } finally {
      await server.shutdown();
    }
  });
});

Deno.test("on Deno Deploy, live mode without gateway keys refuses to start", () => {
  assert.throws(
    () => parseConfig({ DENO_DEPLOYMENT_ID: "abc", ANTHROPIC_API_KEY: "sk-ant-test" }),
    (error: unknown) => error instanceof ConfigError && /SLUICE_API_KEYS/.test(error.message),
  );
  const keyed = parseConfig({
    DENO_DEPLOYMENT_ID: "abc",
    ANTHROPIC_API_KEY: "sk-ant-test",
    SLUICE_API_KEYS: "k1",
  });
  assert.equal(keyed.upstream, "live");
  assert.equal(parseConfig({ DENO_DEPLOYMENT_ID: "abc" }).upstream, "replay");
});

Deno.test("CORS answers the configured origins only, preflights included", async (t) => {
  const { upstream, releaseAll } = await heldUpstream();
  const app = createApp({
    config: testConfig({ SLUICE_CORS_ORIGINS: "https://app.example, https://two.example" }),
    upstream,
    logger: silentLogger,
  });
  await t.step("a preflight from an allowed origin", async () => {
    const response = await app.request("/v1/messages", {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, x-api-key",
      },
    });
    assert.equal(response.status, 204);
    assert.equal(response.headers.get("access-control-allow-origin"), "https://app.example");
    assert.match(response.headers.get("access-control-allow-headers")!, /x-api-key/);
    assert.match(response.headers.get("access-control-allow-methods")!, /POST/);
  });
  await t.step("a request from an allowed origin, and its errors, can be read", async () => {
    const ok = await app.request(post("k", { origin: "https://two.example" }));
    assert.equal(ok.headers.get("access-control-allow-origin"), "https://two.example");
    assert.match(ok.headers.get("access-control-expose-headers")!, /request-id/);
    releaseAll();
    await ok.arrayBuffer();
    const bad = await app.request(
      post("k", { origin: "https://two.example", "content-type": "text/plain" }),
    );
    assert.equal(bad.status, 400);
    assert.equal(bad.headers.get("access-control-allow-origin"), "https://two.example");
  });
  await t.step("another origin gets no CORS headers", async () => {
    const response = await app.request(post("k", { origin: "https://evil.example" }));
    assert.equal(response.headers.get("access-control-allow-origin"), null);
    releaseAll();
    await response.arrayBuffer();
  });
  await t.step("without SLUICE_CORS_ORIGINS nothing is allowed", async () => {
    const closed = createApp({ config: testConfig(), upstream, logger: silentLogger });
    const response = await closed.request("/v1/messages", {
      method: "OPTIONS",
      headers: { origin: "https://app.example", "access-control-request-method": "POST" },
    });
    assert.equal(response.headers.get("access-control-allow-origin"), null);
    await response.body?.cancel();
  });
});

Deno.test("secure headers are on every response (the whole set on documents, three on API answers), and the page keeps its own CSP", async () => {
  const { upstream, releaseAll } = await heldUpstream();
  const app = createApp({ config: testConfig(), upstream, logger: silentLogger });
  const page = await app.request("/");
  assert.equal(page.status, 200);
  assert.equal(page.headers.get("x-content-type-options"), "nosniff");
  assert.equal(page.headers.get("x-frame-options"), "SAMEORIGIN");
  assert.equal(page.headers.get("referrer-policy"), "no-referrer");
  assert.match(page.headers.get("content-security-policy")!, /default-src 'none'/);
  await page.body?.cancel();
  const api = await app.request(post("k"));
  // An API answer: the three that matter when a browser loads it, not the document set.
  assert.equal(api.headers.get("x-content-type-options"), "nosniff");
  assert.match(api.headers.get("strict-transport-security")!, /max-age=/);
  assert.equal(api.headers.get("cross-origin-resource-policy"), "same-origin");
  assert.equal(api.headers.get("x-frame-options"), null);
  assert.match(api.headers.get("content-type")!, /text\/event-stream/);
  releaseAll();
  await api.arrayBuffer();
});

Deno.test("GET calls forwarded upstream (models, one model) count against the per-minute limit too", async () => {
  await withKv(async (kv) => {
    const app = await replayApp({ kv, config: testConfig({ SLUICE_RATE_LIMIT_RPM: "2" }) });
    const get = (path: string) => app.request(path, { headers: { "x-api-key": "key-m" } });
    assert.equal((await get("/v1/models")).status, 200);
    assert.equal((await get("/v1/models")).status, 200);
    await assertRateLimited(await get("/v1/models"), /2 requests per minute/);
    await assertRateLimited(await get("/v1/models/claude-sonnet-5-5"), /2 requests per minute/);
    assert.equal(
      (await app.request("/v1/models", { headers: { "x-api-key": "key-n" } })).status,
      200,
      "another key has its own budget",
    );
  });
});
