/**
 * Cost where people read it: `/stats`' `cost_usd`, `/metrics`' `sluice_cost_usd_total{model}`,
 * `/chat`'s stats line and JSON answer, for requests that completed, were cut short or were left
 * by their client. Every expected dollar figure is worked out by hand in the comments.
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { keyIdOf } from "../lib/http/auth.ts";
import { silentLogger } from "../lib/log.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import type { StatsReport } from "../lib/stats/report.ts";
import {
  instantReplayUpstream,
  liveApp,
  readFixture,
  startFakeUpstream,
  testConfig,
} from "./helpers.ts";

// prompt-cache fixture on claude-opus-5-5 ($4 in, $20 out, $5 5m write, $8 1h write, $0.20 read,
// $0.01 a web search): 0.0048 + 0.05 + 0.16 + 0.05 + 412 × 20 / 1e6 (0.00824) + 0.02 = 0.29304.
const PROMPT_CACHE_USD = 0.29304;
// Its message_start alone (output 1): 0.0048 + 0.05 + 0.16 + 0.05 + 0.00002 = 0.26482.
const PROMPT_CACHE_START_USD = 0.26482;

function messages(model: string, stream: boolean, fixture: string, key = "gw-key-1") {
  return new Request("http://sluice.test/v1/messages", {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-api-key": key,
      "x-sluice-fixture": fixture,
    },
    body: JSON.stringify({
      model,
      max_tokens: 1024,
      stream,
      messages: [{ role: "user", content: "the renewal clause?" }],
    }),
  });
}

async function appWithStats(kv: Deno.Kv) {
  const stats = createKvStats({ kv, logger: silentLogger });
  const app = createApp({
    config: testConfig({ SLUICE_ADMIN_KEY: "admin-key" }),
    upstream: await instantReplayUpstream(),
    logger: silentLogger,
    kv,
    stats,
  });
  return { app, stats };
}

const admin = { headers: { "x-api-key": "admin-key" } };

Deno.test("cost in /stats and /metrics is the sum of each request's hand-computed cost", async (t) => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, stats } = await appWithStats(kv);
    for (const stream of [true, false]) {
      const response = await app.request(messages("claude-opus-5-5", stream, "prompt-cache"));
      assert.equal(response.status, 200);
      await response.arrayBuffer();
    }
    // An unpriced model that used tokens (unknown to sluice, so labelled `other`), and one priced
    // answer on another key.
    await (await app.request(messages("claude-test-model", true, "three-words"))).arrayBuffer();
    // three-words: 24 input, 6 output on claude-sonnet-5-5: 24 × 2 + 6 × 10 = 108 / 1e6.
    const other = await app.request(messages("claude-sonnet-5-5", false, "three-words", "gw-2"));
    await other.arrayBuffer();
    await stats.flush();
    const report: StatsReport = await (await app.request("/stats", admin)).json();
    const key1 = await keyIdOf("gw-key-1"), key2 = await keyIdOf("gw-2");

    await t.step("total, by model, by key and unpriced requests", () => {
      assert.deepEqual(report.cost_usd, {
        total: 0.586188, // 2 × 0.29304 + 0.000108
        unpriced_requests: 1,
        by_model: {
          "claude-opus-5-5": 0.58608,
          "claude-sonnet-5-5": 0.000108,
          other: 0,
        },
        by_key: { [key1]: 0.58608, [key2]: 0.000108 },
      });
    });
    await t.step("each model's view and each window carry their cost", () => {
      assert.equal(report.by_model["claude-opus-5-5"].cost_usd.total, 0.58608);
      assert.equal(report.by_model.other.cost_usd.unpriced_requests, 1);
      assert.equal(report.windows.last_hour.cost_usd.total, 0.586188);
    });
    await t.step("/metrics has sluice_cost_usd_total by model", async () => {
      const text = await (await app.request("/metrics", admin)).text();
      assert.match(text, /^# TYPE sluice_cost_usd_total counter$/m);
      assert.match(text, /^sluice_cost_usd_total\{model="claude-opus-5-5"\} 0\.58608$/m);
      assert.match(text, /^sluice_cost_usd_total\{model="claude-sonnet-5-5"\} 0\.000108$/m);
      assert.match(text, /^sluice_unpriced_requests_total\{model="other"\} 1$/m);
    });
  } finally {
    kv.close();
  }
});

Deno.test("a stream cut short is costed from the usage it reached", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, stats } = await appWithStats(kv);
    // connection-cut: message_start says 15 input, 1 output; the connection drops before
    // message_delta. On claude-haiku-4-5 ($1 in, $5 out): 15 + 5 = 20 / 1e6 = 0.00002.
    const response = await app.request(messages("claude-haiku-4-5", true, "connection-cut"));
    await response.arrayBuffer();
    await stats.flush();
    const report: StatsReport = await (await app.request("/stats", admin)).json();
    assert.equal(report.errors.incomplete, 1);
    assert.equal(report.cost_usd.total, 0.00002);
  } finally {
    kv.close();
  }
});

Deno.test("a stream its client leaves is costed from the usage it reached", async () => {
  const bytes = new TextDecoder().decode(await readFixture("prompt-cache.sse"));
  // Everything up to the first text delta, then an upstream that never ends by itself.
  const head = bytes.slice(0, bytes.indexOf("event: content_block_delta"));
  const firstDelta = bytes.slice(head.length, bytes.indexOf("\n\n", head.length) + 2);
  let upstreamCancelled!: () => void;
  const cancelled = new Promise<void>((resolve) => (upstreamCancelled = resolve));
  const upstream = startFakeUpstream(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode(head + firstDelta));
        },
        cancel: () => upstreamCancelled(),
      }),
      { headers: { "content-type": "text/event-stream" } },
    )
  );
  const kv = await Deno.openKv(":memory:");
  try {
    const stats = createKvStats({ kv, logger: silentLogger });
    const app = liveApp(upstream.url, { SLUICE_ADMIN_KEY: "admin-key" }, { kv, stats });
    const response = await app.request(messages("claude-opus-5-5", true, "prompt-cache"));
    const reader = response.body!.getReader();
    let seen = "";
    while (!seen.includes("text_delta")) {
      seen += new TextDecoder().decode((await reader.read()).value);
    }
    await reader.cancel();
    await cancelled;
    await stats.flush();
    const report: StatsReport = await (await app.request("/stats", admin)).json();
    assert.equal(report.errors.client_aborted, 1);
    assert.equal(report.cost_usd.total, PROMPT_CACHE_START_USD);
  } finally {
    kv.close();
    await upstream.close();
  }
});

Deno.test("/chat reports the answer's cost in its stats line, done event and JSON answer", async (t) => {
  const app = createApp({
    config: testConfig(),
    upstream: await instantReplayUpstream(),
    logger: silentLogger,
  });
  const chat = (query: string, body: Record<string, unknown>, accept?: string) =>
    app.request(`/chat${query}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-sluice-fixture": "prompt-cache",
        ...(accept ? { accept } : {}),
      },
      body: JSON.stringify({ model: "claude-opus-5-5", message: "the renewal clause?", ...body }),
    });
  await t.step("plain text ends with the stats line", async () => {
    const text = await (await chat("?stats=1", {})).text();
    assert.match(text, / · \$0\.293040 · /);
  });
  await t.step("the SSE done event has cost_usd", async () => {
    const text = await (await chat("", {}, "text/event-stream")).text();
    const done = text.split("\n\n").find((e) => e.startsWith("event: done"))!;
    assert.equal(JSON.parse(done.split("data: ")[1]).cost_usd, PROMPT_CACHE_USD);
  });
  await t.step("the JSON answer has cost_usd; an unpriced model has null", async () => {
    const priced = await (await chat("", { stream: false })).json();
    assert.equal(priced.cost_usd, PROMPT_CACHE_USD);
    const unpriced = await (await chat("?stats=1", { model: "claude-test-model" })).text();
    assert.match(unpriced, / · unpriced · /);
  });
});
