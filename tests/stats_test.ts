import assert from "node:assert/strict";
import type { Hono } from "hono";
import type { AppEnv } from "../lib/app_env.ts";
import { manualClock } from "../lib/clock.ts";
import { RELATIVE_ERROR } from "../lib/stats/histogram.ts";
import { createLogger } from "../lib/log.ts";
import { memorySink, type RequestSummary, tokenUsage } from "../lib/stats/request_summary.ts";
import type { RecentEntry } from "../lib/stats/recent.ts";
import type { LatencyFigures, StatsReport, StatsView } from "../lib/stats/report.ts";
import { WINDOWS } from "../lib/stats/kv_layout.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import { projectFixtures, replayApp } from "./helpers.ts";
import {
  exactQuantile,
  type Expected,
  fixtureRequest,
  MODEL,
  sendFixture,
  T0,
  tally,
  tempKvPath,
  timedStatsApp,
} from "./stats_support.ts";

type App = Hono<AppEnv>;

async function getJson<T>(app: App, path: string, headers: Record<string, string> = {}) {
  const response = await app.request(`http://sluice.test${path}`, { headers });
  assert.equal(response.status, 200, `${path}: ${response.status}`);
  return await response.json() as T;
}

/** Asserts a reported latency matches the exact figures of `samples` (ms). */
function assertLatency(label: string, reported: LatencyFigures, samples: number[]) {
  assert.equal(reported.count, samples.length, `${label}: count`);
  if (samples.length === 0) {
    assert.deepEqual([reported.p50, reported.p90, reported.p99, reported.mean], [
      null,
      null,
      null,
      null,
    ]);
    return;
  }
  for (const [q, value] of [[0.5, reported.p50], [0.9, reported.p90], [0.99, reported.p99]]) {
    const exact = exactQuantile(samples, q!);
    // Within the stated relative error, plus the 0.01 ms rounding of the JSON figures.
    const allowed = exact * RELATIVE_ERROR + 0.006;
    assert.ok(Math.abs(value! - exact) <= allowed, `${label} p${q! * 100}: ${value} vs ${exact}`);
  }
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  assert.ok(Math.abs(reported.mean! - mean) <= 0.006, `${label} mean: ${reported.mean} vs ${mean}`);
}

/** Checks a whole report (or window, or model section) against the requests that made it. */
function assertFigures(label: string, report: StatsView, sent: Expected[]) {
  const ok = sent.filter((e) => e.outcome === "ok");
  assert.deepEqual(report.requests, {
    total: sent.length,
    streaming: sent.filter((e) => e.streaming).length,
    non_streaming: sent.filter((e) => !e.streaming).length,
    ok: ok.length,
    errors: sent.length - ok.length,
  }, `${label}: requests`);
  assert.deepEqual(
    report.errors,
    tally(sent.filter((e) => e.outcome !== "ok"), (e) => e.outcome),
    `${label}: errors`,
  );
  assert.deepEqual(report.statuses, tally(sent, (e) => String(e.status)), `${label}: statuses`);
  const sum = (pick: (e: Expected) => number) => sent.reduce((n, e) => n + pick(e), 0);
  assert.deepEqual(report.tokens, {
    input: sum((e) => e.usage.input_tokens),
    output: sum((e) => e.usage.output_tokens),
    cache_creation_input: sum((e) => e.usage.cache_creation_input_tokens),
    cache_read_input: sum((e) => e.usage.cache_read_input_tokens),
  }, `${label}: tokens`);
  const events: Record<string, number> = {};
  for (const e of sent) {
    for (const [k, n] of Object.entries(e.events)) events[k] = (events[k] ?? 0) + n;
  }
  assert.deepEqual(report.events, events, `${label}: events`);
  for (const [streaming, key] of [[true, "streaming"], [false, "non_streaming"]] as const) {
    const mine = ok.filter((e) => e.streaming === streaming);
    const values = (pick: (e: Expected) => number | null) =>
      mine.map(pick).filter((v): v is number => v !== null);
    assertLatency(`${label} ttft ${key}`, report.ttft_ms[key], values((e) => e.ttftMs));
    assertLatency(`${label} total ${key}`, report.total_ms[key], values((e) => e.totalMs));
    assertLatency(
      `${label} upstream ttft ${key}`,
      report.upstream_ttft_ms[key],
      values((e) => e.upstreamTtftMs),
    );
  }
  assert.equal(report.comparison.ttft_p50_ms.streaming, report.ttft_ms.streaming.p50);
  assert.equal(report.comparison.ttft_p50_ms.non_streaming, report.ttft_ms.non_streaming.p50);
}

/** Every fixture, streaming and not, through one app; returns what each should have recorded. */
async function sendEveryFixture(app: App, clock: { now(): number }) {
  const names = [...(await projectFixtures()).fixtures.keys()].sort();
  const sent: (Expected & { at: number })[] = [];
  for (const name of names) {
    for (const streaming of [true, false]) {
      const at = clock.now();
      sent.push({ ...(await sendFixture(app, name, streaming)), at });
    }
  }
  return sent;
}

/** The parts of a report that are about the requests (not about when or where it was read). */
function figuresOf(report: StatsReport) {
  const { generated_at: _g, storage: _s, windows, ...rest } = report;
  return {
    ...rest,
    windows: Object.fromEntries(
      Object.entries(windows).map(([name, { from: _f, to: _t, ...w }]) => [name, w]),
    ),
  };
}

Deno.test("every figure recorded for replayed fixtures is what the fixture implies", async (t) => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, stats, clock } = await timedStatsApp({ kv });
    const sent = await sendEveryFixture(app, clock);
    await stats.flush();
    assert.ok(sent.some((e) => e.outcome === "overloaded_error" && e.streaming));
    assert.ok(sent.some((e) => e.outcome === "incomplete"));
    assert.ok(sent.some((e) => e.outcome === "rate_limit_error"));
    assert.ok(sent.some((e) => (e.events.ping ?? 0) > 0));

    await t.step(
      "the recent log has each request, newest first, with its exact figures",
      async () => {
        const { requests } = await getJson<{ requests: RecentEntry[] }>(
          app,
          "/stats/recent?limit=1000",
        );
        assert.equal(requests.length, sent.length);
        const oldestFirst = [...requests].reverse();
        sent.forEach((e, i) => {
          const entry = oldestFirst[i];
          const label = `${e.fixture} ${e.streaming ? "streaming" : "non-streaming"}`;
          assert.equal(entry.time, new Date(e.at).toISOString(), label);
          assert.equal(entry.endpoint, "/v1/messages");
          assert.equal(entry.streaming, e.streaming, label);
          assert.equal(entry.outcome, e.outcome, label);
          assert.equal(entry.status, e.status, label);
          assert.equal(entry.model, e.model, label);
          assert.equal(entry.retries, 0);
          const ms = (v: number | null) => (v === null ? null : Math.round(v * 1000) / 1000);
          assert.equal(entry.ttft_ms, ms(e.ttftMs), `${label}: ttft`);
          assert.equal(entry.total_ms, ms(e.totalMs), `${label}: total`);
          assert.equal(entry.upstream_ttft_ms, ms(e.upstreamTtftMs), `${label}: upstream ttft`);
          assert.deepEqual(entry.tokens, {
            input: e.usage.input_tokens,
            output: e.usage.output_tokens,
            cache_creation_input: e.usage.cache_creation_input_tokens,
            cache_read_input: e.usage.cache_read_input_tokens,
          }, label);
          assert.deepEqual(entry.events, e.events, label);
          assert.ok(entry.id.length > 0);
        });
      },
    );

    const report = await getJson<StatsReport>(app, "/stats");
    await t.step("counts, errors by type, tokens, events and latencies add up", () => {
      assertFigures("all time", report, sent);
    });
    await t.step("per model and per endpoint figures are those of their requests", () => {
      const models = [...new Set(sent.map((e) => e.model))].sort();
      assert.deepEqual(Object.keys(report.by_model).sort(), models);
      for (const model of models) {
        assertFigures(
          `model ${model}`,
          report.by_model[model],
          sent.filter((e) => e.model === model),
        );
      }
      assertFigures("endpoint", report.by_endpoint["/v1/messages"], sent);
    });
    await t.step("the last hour and the last 24 hours hold all of them", () => {
      for (const spec of WINDOWS) assertFigures(spec.name, report.windows[spec.name], sent);
    });
    await t.step("the comparison reads streaming vs non-streaming TTFT off the p50s", () => {
      const { comparison } = report;
      const s = report.ttft_ms.streaming.p50!, n = report.ttft_ms.non_streaming.p50!;
      assert.equal(comparison.first_token_speedup, Math.round((n / s) * 10) / 10);
      assert.equal(comparison.total_p50_ms.streaming, report.total_ms.streaming.p50);
      assert.match(comparison.summary, /first token after .* streaming vs .* non-streaming/);
    });
    await t.step("first and last request times are those of the first and last request", () => {
      assert.equal(report.first_request_at, new Date(sent[0].at).toISOString());
      const last = sent.at(-1)!;
      assert.equal(
        report.last_request_at,
        new Date(Math.floor(last.at + last.totalMs)).toISOString(),
      );
    });
  } finally {
    kv.close();
  }
});

function summaryAt(startedAt: number, extra: Partial<RequestSummary> = {}): RequestSummary {
  return {
    id: `req_${startedAt}`,
    endpoint: "/v1/messages",
    streaming: true,
    model: MODEL,
    outcome: "ok",
    status: 200,
    retries: 0,
    startedAt,
    ttftMs: 400,
    totalMs: 2000,
    upstreamTtftMs: 390,
    usage: tokenUsage({ input_tokens: 10, output_tokens: 20 }),
    stopReason: "end_turn",
    events: { ping: 1 },
    ...extra,
  };
}

Deno.test("records within the write interval share one KV write, and reads write what waits first", async (t) => {
  const kv = await Deno.openKv(":memory:");
  try {
    const commits: Deno.KvMutation[][] = [];
    const options = (writeIntervalMs: number) => ({
      kv,
      clock: manualClock(T0),
      writeIntervalMs,
      commit: async (kv: Deno.Kv, batch: Deno.KvMutation[]) => {
        commits.push(batch);
        await kv.atomic().mutate(...batch).commit();
      },
    });

    await t.step("a read does not wait for the interval", async () => {
      const stats = createKvStats(options(60_000));
      await Promise.all([1, 2, 3].map((i) => stats.record(summaryAt(T0 - i * 1000))));
      assert.equal(commits.length, 0, "nothing is written before the interval is up");
      const report = await stats.report();
      assert.equal(report.requests.total, 3);
      assert.equal(report.tokens.output, 60);
      assert.equal(commits.length, 1, "the three records went out in one write");
      const requestSums = commits[0].filter((m) => m.type === "sum" && m.key.at(-1) === "requests");
      assert.equal(requestSums.length, 1, "their counters were added up before the write");
      assert.equal((requestSums[0] as { value: Deno.KvU64 }).value.value, 3n);
      await stats.flush();
      assert.equal(commits.length, 1, "a flush with nothing waiting writes nothing");
    });

    await t.step("the records of one interval are written together when it is up", async () => {
      commits.length = 0;
      const stats = createKvStats(options(20));
      await Promise.all([4, 5, 6].map((i) => stats.record(summaryAt(T0 - i * 1000))));
      assert.equal(commits.length, 0);
      // A timer set after the interval's own fires after it (timers of equal or later due time
      // run in order), by when the write has begun.
      await new Promise((resolve) => setTimeout(resolve, 40));
      assert.equal(commits.length, 1);
      await stats.flush();
      assert.equal((await stats.report()).requests.total, 6);
    });
  } finally {
    kv.close();
  }
});

Deno.test("recent windows count only the requests inside them, from keys that expire", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const clock = manualClock(T0);
    const mutations: Deno.KvMutation[] = [];
    const stats = createKvStats({
      kv,
      clock,
      commit: async (kv, batch) => {
        mutations.push(...batch);
        await kv.atomic().mutate(...batch).commit();
      },
    });
    const hour = 60 * 60_000;
    const times = [T0 - 25 * hour, T0 - 2 * hour, T0 - 10 * 60_000, T0 - 30_000];
    for (const at of times) stats.record(summaryAt(at));
    await stats.flush();
    let report = await stats.report();
    assert.equal(report.requests.total, 4);
    assert.equal(report.windows.last_24h.requests.total, 3);
    assert.equal(report.windows.last_hour.requests.total, 2);
    assert.equal(report.windows.last_hour.tokens.output, 40);

    clock.advance(hour);
    report = await stats.report();
    assert.equal(report.windows.last_hour.requests.total, 0);
    assert.equal(report.windows.last_24h.requests.total, 3);
    assert.equal(report.requests.total, 4, "all-time figures never expire");

    const windowSets = mutations.filter((m) => m.key[2] === "w");
    assert.ok(windowSets.length > 0);
    for (const m of windowSets) {
      assert.equal(m.type, "set");
      const spec = WINDOWS.find((w) => w.granularity === m.key[3])!;
      const expireIn = (m as { expireIn?: number }).expireIn!;
      assert.ok(expireIn > 0 && expireIn <= (spec.buckets + 1) * spec.bucketMs, `${expireIn}`);
    }
    assert.ok(
      !windowSets.some((m) => Number(m.key[4]) < T0 - 24 * hour),
      "a request older than every window writes no window keys",
    );
    for (const m of mutations.filter((m) => m.key[2] === "all")) {
      assert.equal(m.type, "sum");
      assert.ok((m as { value: unknown }).value instanceof Deno.KvU64);
    }
  } finally {
    kv.close();
  }
});

Deno.test("two app instances sharing one KV add up to what one instance records", async () => {
  const { path, cleanup } = await tempKvPath();
  const kvA = await Deno.openKv(path);
  const kvB = await Deno.openKv(path);
  const kvSolo = await Deno.openKv(":memory:");
  try {
    const a = await timedStatsApp({ kv: kvA });
    const b = await timedStatsApp({ kv: kvB });
    const solo = await timedStatsApp({ kv: kvSolo });
    const planA: [string, boolean][] = [
      ["three-words", true],
      ["three-words", false],
      ["essay", true],
      ["overloaded-mid-stream", true],
      ["rate-limited", false],
    ];
    const planB: [string, boolean][] = [
      ["essay", false],
      ["three-words", true],
      ["connection-cut", true],
      ["tool-max-tokens-no-stop", true],
      ["tool-max-tokens-no-stop", false],
      ["rate-limited", true],
    ];
    const run = async (app: App, plan: [string, boolean][]) => {
      const out: Expected[] = [];
      for (const [name, streaming] of plan) out.push(await sendFixture(app, name, streaming));
      return out;
    };
    // Both instances write at the same time, into the same keys.
    const [sentA, sentB] = await Promise.all([run(a.app, planA), run(b.app, planB)]);
    const sentSolo = await run(solo.app, [...planA, ...planB]);
    await Promise.all([a.stats.flush(), b.stats.flush(), solo.stats.flush()]);

    const fromA = await getJson<StatsReport>(a.app, "/stats");
    const fromB = await getJson<StatsReport>(b.app, "/stats");
    const fromSolo = await getJson<StatsReport>(solo.app, "/stats");
    assertFigures("shared KV", fromA, [...sentA, ...sentB]);
    assertFigures("one instance", fromSolo, sentSolo);
    assert.deepEqual(
      { ...figuresOf(fromA), first_request_at: null, last_request_at: null },
      { ...figuresOf(fromSolo), first_request_at: null, last_request_at: null },
      "two instances add up exactly to one",
    );
    assert.deepEqual(figuresOf(fromB), figuresOf(fromA), "either instance reads the same");

    const metrics = async (app: App) =>
      await (await app.request("http://sluice.test/metrics")).text();
    assert.equal(await metrics(a.app), await metrics(solo.app));
  } finally {
    kvA.close();
    kvB.close();
    kvSolo.close();
    await cleanup();
  }
});

Deno.test("stats survive a restart with a file-backed KV", async () => {
  const { path, cleanup } = await tempKvPath();
  const clock = manualClock(T0);
  try {
    let kv = await Deno.openKv(path);
    const first = await timedStatsApp({ kv, clock });
    const sent = [
      await sendFixture(first.app, "essay", true),
      await sendFixture(first.app, "essay", false),
      await sendFixture(first.app, "overloaded-mid-stream", true),
    ];
    await first.stats.flush();
    const before = await getJson<StatsReport>(first.app, "/stats");
    const recentBefore = await getJson<{ requests: RecentEntry[] }>(first.app, "/stats/recent");
    kv.close();

    kv = await Deno.openKv(path);
    const second = await timedStatsApp({ kv, clock });
    const after = await getJson<StatsReport>(second.app, "/stats");
    assertFigures("after restart", after, sent);
    assert.deepEqual(figuresOf(after), figuresOf(before));
    assert.deepEqual(await getJson(second.app, "/stats/recent"), recentBefore);

    // The new process adds to what the old one left, in all-time figures and in the windows.
    sent.push(await sendFixture(second.app, "three-words", true));
    await second.stats.flush();
    const more = await getJson<StatsReport>(second.app, "/stats");
    assertFigures("after more requests", more, sent);
    assertFigures("last hour after more requests", more.windows.last_hour, sent);
    kv.close();
  } finally {
    await cleanup();
  }
});

Deno.test("a failed stats write is logged and counted, never raised, and retried", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const lines: string[] = [];
    let calls = 0;
    const { app, stats } = await timedStatsApp({
      kv,
      stats: {
        logger: createLogger({ level: "warn", write: (_level, line) => lines.push(line) }),
        commit: async (kv, batch) => {
          if (++calls === 1) throw new Error("database is locked");
          await kv.atomic().mutate(...batch).commit();
        },
      },
    });
    const response = await app.request(fixtureRequest("three-words", true));
    assert.equal(response.status, 200);
    const text = await response.text();
    assert.match(text, /event: message_stop/, "the client got the whole stream");
    await stats.flush();
    assert.equal(stats.writeFailures, 1);
    assert.equal(lines.length, 1);
    assert.match(lines[0], /stats write failed.*database is locked/);
    const report = await stats.report();
    assert.equal(report.storage.write_failures, 1);
    assert.equal(report.requests.total, 1, "kept and written once, not lost, not doubled");
  } finally {
    kv.close();
  }
});

Deno.test("requests refused before the upstream are recorded as invalid_request", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, stats } = await timedStatsApp({ kv });
    const bad = await app.request("http://sluice.test/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json" },
      // `stream` is one of the two fields sluice reads itself: a string there is refused.
      body: JSON.stringify({ model: MODEL, stream: "yes", messages: [] }),
    });
    assert.equal(bad.status, 400);
    await bad.body?.cancel();
    const notJson = await app.request("http://sluice.test/v1/messages", {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "hello",
    });
    assert.equal(notJson.status, 400);
    await notJson.body?.cancel();
    await stats.flush();
    const { requests } = await getJson<{ requests: RecentEntry[] }>(app, "/stats/recent");
    assert.deepEqual(
      requests.map((r) => [r.outcome, r.status, r.model, r.streaming, r.ttft_ms, r.tokens.input]),
      // Never labelled with the caller's model: a refused request reached none.
      [["invalid_request", 400, null, false, null, 0], [
        "invalid_request",
        400,
        null,
        false,
        null,
        0,
      ]],
    );
    const report = await stats.report();
    assert.deepEqual(report.errors, { invalid_request: 2 });
    assert.equal(report.ttft_ms.streaming.count, 0, "refusals have no TTFT");
  } finally {
    kv.close();
  }
});

Deno.test("stats endpoints need the admin key once sluice has gateway keys", async (t) => {
  const kv = await Deno.openKv(":memory:");
  try {
    const gateway = "sk-sluice-gateway-key-1";
    const admin = "sk-sluice-admin-key-1";
    const { app, stats } = await timedStatsApp({
      kv,
      env: { SLUICE_API_KEYS: gateway, SLUICE_ADMIN_KEY: admin },
    });
    const prompt = "my secret prompt about zebras";
    const ok = await app.request(
      fixtureRequest("three-words", true, { "x-api-key": gateway }, prompt),
    );
    const answer = await ok.text();
    // A caller with a wrong key is refused and not recorded.
    const denied = await app.request(fixtureRequest("three-words", true, { "x-api-key": "nope" }));
    assert.equal(denied.status, 401);
    await denied.body?.cancel();
    await stats.flush();

    for (const path of ["/stats", "/stats/recent", "/metrics"]) {
      await t.step(path, async () => {
        const status = async (headers: Record<string, string>) => {
          const response = await app.request(`http://sluice.test${path}`, { headers });
          await response.body?.cancel();
          return response.status;
        };
        assert.equal(await status({}), 401);
        assert.equal(await status({ "x-api-key": gateway }), 401, "a gateway key is not enough");
        assert.equal(await status({ "x-api-key": admin + "x" }), 401);
        assert.equal(await status({ "x-api-key": admin }), 200);
        assert.equal(await status({ authorization: `Bearer ${admin}` }), 200);
        const body = await (await app.request(`http://sluice.test${path}`, {
          headers: { "x-api-key": admin },
        })).text();
        for (const secret of [prompt, gateway, admin]) assert.ok(!body.includes(secret));
        const words = [...answer.matchAll(/"text":"([^"]+)"/g)].map((m) => m[1].trim());
        for (const word of words.filter((w) => w.length > 3)) {
          assert.ok(!body.includes(word), `the answer's text "${word}" is not shown`);
        }
      });
    }
    const report = await stats.report();
    assert.equal(report.requests.total, 1);
  } finally {
    kv.close();
  }
});

Deno.test("with gateway keys but no admin key, the stats endpoints stay closed", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app } = await timedStatsApp({ kv, env: { SLUICE_API_KEYS: "gk-1" } });
    const response = await app.request("http://sluice.test/stats", {
      headers: { "x-api-key": "gk-1" },
    });
    assert.equal(response.status, 403);
    const body = await response.json();
    assert.equal(body.error.type, "permission_error");
    assert.match(body.error.message, /SLUICE_ADMIN_KEY/);
  } finally {
    kv.close();
  }
});

Deno.test("the recent log keeps a bounded number of entries and validates its limit", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, stats } = await timedStatsApp({ kv, stats: { recentLimit: 3 } });
    const sent: Expected[] = [];
    for (let i = 0; i < 5; i++) sent.push(await sendFixture(app, "three-words", i % 2 === 0));
    await stats.flush();
    const { requests } = await getJson<{ requests: RecentEntry[] }>(app, "/stats/recent?limit=100");
    assert.deepEqual(
      requests.map((r) => r.streaming),
      sent.slice(-3).reverse().map((e) => e.streaming),
    );
    const two = await getJson<{ requests: RecentEntry[] }>(app, "/stats/recent?limit=2");
    assert.deepEqual(two.requests, requests.slice(0, 2));
    for (const limit of ["0", "abc", "5000"]) {
      const response = await app.request(`http://sluice.test/stats/recent?limit=${limit}`);
      assert.equal(response.status, 400, limit);
      assert.equal((await response.json()).error.type, "invalid_request_error");
    }
  } finally {
    kv.close();
  }
});

Deno.test("recent entries dropped before their write are never written nor deleted", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const commits: Deno.KvMutation[][] = [];
    const stats = createKvStats({
      kv,
      clock: manualClock(T0),
      recentLimit: 3,
      writeIntervalMs: 60_000,
      commit: async (kv, batch) => {
        commits.push(batch);
        await kv.atomic().mutate(...batch).commit();
      },
    });
    const recentOps = (batch: Deno.KvMutation[]) =>
      batch.filter((m) => m.key[1] === "recent").map((m) => `${m.type} ${String(m.key[2])}`);
    for (let i = 1; i <= 5; i++) await stats.record(summaryAt(T0 + i));
    await stats.flush();
    assert.deepEqual(recentOps(commits[0]), [`set ${T0 + 3}`, `set ${T0 + 4}`, `set ${T0 + 5}`]);
    for (let i = 6; i <= 7; i++) await stats.record(summaryAt(T0 + i));
    await stats.flush();
    assert.deepEqual(recentOps(commits[1]).sort(), [
      `delete ${T0 + 3}`,
      `delete ${T0 + 4}`,
      `set ${T0 + 6}`,
      `set ${T0 + 7}`,
    ]);
    const kept = await stats.recent(100);
    assert.deepEqual(kept.map((entry) => entry.id), [
      `req_${T0 + 7}`,
      `req_${T0 + 6}`,
      `req_${T0 + 5}`,
    ]);
  } finally {
    kv.close();
  }
});

Deno.test("without a KV stats store the stats endpoints answer 404 and say why", async () => {
  const app = await replayApp({ stats: memorySink() });
  for (const path of ["/stats", "/stats/recent", "/metrics"]) {
    const response = await app.request(`http://sluice.test${path}`);
    assert.equal(response.status, 404);
    assert.match((await response.json()).error.message, /stats are off/);
  }
});

Deno.test("an admin key alone closes the stats endpoints but not the model endpoints", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const { app, stats: sink } = await timedStatsApp({ kv, env: { SLUICE_ADMIN_KEY: "adm-1" } });
    const stats = async (headers: Record<string, string>) => {
      const response = await app.request("http://sluice.test/stats", { headers });
      await response.body?.cancel();
      return response.status;
    };
    assert.equal(await stats({}), 401);
    assert.equal(await stats({ "x-api-key": "adm-1" }), 200);
    const answer = await app.request(fixtureRequest("three-words", false));
    await answer.body?.cancel();
    assert.equal(answer.status, 200);
    await sink.flush(); // the request's stats are written before the test ends
  } finally {
    kv.close();
  }
});

Deno.test("with the KV sink, a request is priced, logged and counted only after its response's last bytes were handed on", async () => {
  const kv = await Deno.openKv(":memory:");
  const lines: string[] = [];
  const logger = createLogger({ level: "info", write: (_level, line) => lines.push(line) });
  const stats = createKvStats({ kv, logger });
  const app = await replayApp({ stats, logger });
  try {
    const response = await app.request("/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json", "x-sluice-fixture": "three-words" },
      body: JSON.stringify({
        model: "claude-haiku-4-5",
        max_tokens: 64,
        stream: true,
        messages: [{ role: "user", content: "hi" }],
      }),
    });
    const body = await response.text();
    assert.match(body, /event: message_stop/);
    // The whole stream is the client's, and none of the recording has run yet.
    assert.equal(lines.filter((line) => / request /.test(line)).length, 0);
    await stats.flush();
    assert.equal(lines.filter((line) => / request /.test(line)).length, 1);
    assert.equal((await stats.report()).requests.streaming, 1);
  } finally {
    kv.close();
  }
});
