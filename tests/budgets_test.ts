/**
 * Key budgets: daily and monthly USD caps counted in Deno KV across instances, a 429 before any
 * upstream call once a cap is reached, streams in flight finished, `GET /stats/keys/{id}`.
 */
import assert from "node:assert/strict";
import { keyIdOf } from "../lib/http/auth.ts";
import { manualClock } from "../lib/clock.ts";
import { ConfigError, parseConfig } from "../lib/config.ts";
import { silentLogger } from "../lib/log.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import { kvSpendStore } from "../lib/stats/budgets.ts";
import {
  liveApp,
  readFixture,
  startFakeUpstream,
  startFixtureUpstream,
  startMain,
} from "./helpers.ts";

const KEY = "gw-budget-key";
// One prompt-cache answer on claude-opus-5-5 costs $0.29304 (worked out in cost_test.ts).
const ANSWER_USD = 0.29304;
// 2026-03-31 23:00 UTC: an hour before both the day and the month end.
const T0 = Date.UTC(2026, 2, 31, 23, 0, 0);

function ask(stream = false) {
  return new Request("http://sluice.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": KEY },
    body: JSON.stringify({
      model: "fixture/prompt-cache",
      max_tokens: 1024,
      stream,
      messages: [{ role: "user", content: "the renewal clause?" }],
    }),
  });
}

function instance(
  upstreamUrl: string,
  kv: Deno.Kv,
  budgets: string,
  clock = manualClock(T0),
) {
  const stats = createKvStats({ kv, clock, logger: silentLogger });
  const app = liveApp(
    upstreamUrl,
    { SLUICE_API_KEYS: KEY, SLUICE_ADMIN_KEY: "admin-key", SLUICE_KEY_BUDGETS: budgets },
    { kv, stats, clock },
  );
  /** Sends a request and waits until its spend is counted. */
  const send = async (request: Request) => {
    const response = await app.request(request);
    const body = await response.text();
    await stats.flush();
    return { response, body };
  };
  return { app, stats, send, clock };
}

Deno.test("a daily cap counted across two instances on one KV refuses the next request with a 429", async (t) => {
  const upstream = startFixtureUpstream();
  const dir = await Deno.makeTempDir({ prefix: "sluice-budget-" });
  // Two handles on one KV file: what two isolates sharing a KV see.
  const kvA = await Deno.openKv(`${dir}/kv.sqlite3`);
  const kvB = await Deno.openKv(`${dir}/kv.sqlite3`);
  try {
    const budgets = JSON.stringify({ [await keyIdOf(KEY)]: { daily_usd: 0.5 } });
    const a = instance(upstream.url, kvA, budgets);
    const b = instance(upstream.url, kvB, budgets, a.clock);

    await t.step("under the cap: answered (0.29304, then 0.58608 spent)", async () => {
      assert.equal((await a.send(ask())).response.status, 200);
      assert.equal((await b.send(ask())).response.status, 200);
      assert.equal(upstream.requests.length, 2);
    });
    await t.step("over it: 429 naming the cap and its reset, and no upstream call", async () => {
      for (const app of [a, b]) {
        const { response, body } = await app.send(ask(true));
        assert.equal(response.status, 429);
        assert.equal(response.headers.get("retry-after"), "3600");
        const error = JSON.parse(body);
        assert.equal(error.type, "error");
        assert.equal(error.error.type, "rate_limit_error");
        assert.match(error.error.message, /daily budget of \$0\.5 \(\$0\.58608 spent today/);
        assert.match(error.error.message, /resets at 2026-04-01T00:00:00\.000Z/);
      }
      assert.equal(upstream.requests.length, 2);
    });
    await t.step("GET /stats/keys/{id} shows spend against the caps", async () => {
      const id = await keyIdOf(KEY);
      const response = await a.app.request(`/stats/keys/${id}`, {
        headers: { "x-api-key": "admin-key" },
      });
      assert.equal(response.status, 200);
      const body = await response.json();
      assert.deepEqual(body.daily, {
        period: "2026-03-31",
        spent_usd: 2 * ANSWER_USD,
        cap_usd: 0.5,
        remaining_usd: 0,
        resets_at: "2026-04-01T00:00:00.000Z",
      });
      assert.equal(body.monthly.cap_usd, null);
      assert.equal(body.over_cap, "daily");
      assert.equal(body.all_time.cost_usd, 2 * ANSWER_USD);
      // The two answered requests (refusals are not counted per key).
      assert.equal(body.all_time.requests, 2);
      const bad = await a.app.request("/stats/keys/not-an-id", {
        headers: { "x-api-key": "admin-key" },
      });
      assert.equal(bad.status, 400);
      const anonymous = await a.app.request(`/stats/keys/${id}`, {
        headers: { "x-api-key": KEY },
      });
      assert.equal(anonymous.status, 401);
    });
    await t.step("the next UTC day starts from 0", async () => {
      a.clock.advance(60 * 60_000);
      assert.equal((await a.send(ask())).response.status, 200);
    });
  } finally {
    kvA.close();
    kvB.close();
    await upstream.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a monthly cap applies to every key through *", async () => {
  const upstream = startFixtureUpstream();
  const kv = await Deno.openKv(":memory:");
  try {
    const a = instance(upstream.url, kv, '{"*": {"monthly_usd": 0.25}}');
    assert.equal((await a.send(ask())).response.status, 200);
    const { response, body } = await a.send(ask());
    assert.equal(response.status, 429);
    assert.match(JSON.parse(body).error.message, /monthly budget of \$0\.25 .*this month/);
    assert.match(JSON.parse(body).error.message, /resets at 2026-04-01T00:00:00\.000Z/);
  } finally {
    kv.close();
    await upstream.close();
  }
});

Deno.test("a stream in flight when its key crosses the cap is finished, not cut", async () => {
  const bytes = new TextDecoder().decode(await readFixture("prompt-cache.sse"));
  const half = bytes.indexOf("event: content_block_stop");
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const whole = new TextDecoder().decode(await readFixture("prompt-cache.json"));
  // The streamed request's upstream sends half its answer, then waits to be released.
  const upstream = startFakeUpstream((_request, seen) => {
    if (!JSON.parse(seen.body).stream) {
      return new Response(whole, { headers: { "content-type": "application/json" } });
    }
    const encoder = new TextEncoder();
    return new Response(
      new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(encoder.encode(bytes.slice(0, half)));
          await released;
          controller.enqueue(encoder.encode(bytes.slice(half)));
          controller.close();
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    );
  });
  const kv = await Deno.openKv(":memory:");
  try {
    const a = instance(upstream.url, kv, '{"*": {"daily_usd": 0.3}}');
    const streamed = await a.app.request(ask(true));
    assert.equal(streamed.status, 200);
    // Meanwhile another answer takes the key to $0.29304, under $0.30: allowed. The stream's
    // own cost will take it over.
    assert.equal((await a.send(ask())).response.status, 200);
    release();
    const text = await streamed.text();
    await a.stats.flush();
    assert.match(text, /event: message_stop/);
    assert.doesNotMatch(text, /event: error/);
    const next = await a.send(ask());
    assert.equal(next.response.status, 429);
    assert.match(JSON.parse(next.body).error.message, /\$0\.58608 spent today/);
  } finally {
    kv.close();
    await upstream.close();
  }
});

Deno.test("a bad SLUICE_KEY_BUDGETS stops start-up with a message naming it", () => {
  const bad = [
    "{nope",
    '{"*": {}}',
    '{"*": {"daily_usd": -1}}',
    '{"*": {"daily_usd": "5"}}',
    '{"not-a-key-id": {"daily_usd": 5}}',
    '{"*": {"daily_usd": 5, "weekly_usd": 9}}',
    "/no/such/budgets.json",
  ];
  for (const value of bad) {
    assert.throws(
      () =>
        parseConfig({ SLUICE_KEY_BUDGETS: value }, {
          readTextFile: () => Deno.readTextFileSync(value),
        }),
      (error: unknown) =>
        error instanceof ConfigError && /^SLUICE_KEY_BUDGETS: /.test(error.message),
      value,
    );
  }
  const ok = parseConfig({ SLUICE_KEY_BUDGETS: '{"0123456789abcdef": {"monthly_usd": 20}}' });
  assert.deepEqual(ok.keyBudgets, { "0123456789abcdef": { monthly_usd: 20 } });
});

Deno.test("batched spend is exact for its own isolate at once, reaches KV at the flush, and survives a failed write", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-spend-" });
  const kvA = await Deno.openKv(`${dir}/kv.sqlite3`);
  const kvB = await Deno.openKv(`${dir}/kv.sqlite3`);
  let failNext = false;
  // KV whose next commit fails, as a full disk or a lost connection would.
  const flaky = new Proxy(kvA, {
    get(target, name) {
      if (name !== "atomic") return Reflect.get(target, name).bind(target);
      return () => {
        const atomic = target.atomic();
        const commit = atomic.commit.bind(atomic);
        atomic.commit = () => {
          if (!failNext) return commit();
          failNext = false;
          return Promise.reject(new Error("disk I/O error"));
        };
        return atomic;
      };
    },
  });
  const usd = (pico: number) => pico / 1e12;
  // A flush interval no test run reaches: only the explicit flushes write.
  const a = kvSpendStore(flaky, { flushMs: 3_600_000 });
  const b = kvSpendStore(kvB);
  try {
    await t.step("the isolate that spent sees it before any write", async () => {
      await a.add("k1", 2e12, T0);
      await a.add("k1", 1e12, T0);
      assert.equal((await a.spend("k1", T0)).daily.spent_usd, usd(3e12));
      assert.equal((await b.spend("k1", T0)).daily.spent_usd, 0, "not written yet");
    });
    await t.step("another isolate sees it once flushed, and nothing is counted twice", async () => {
      await a.flush();
      assert.equal((await b.spend("k1", T0)).monthly.spent_usd, usd(3e12));
      assert.equal((await a.spend("k1", T0)).monthly.spent_usd, usd(3e12));
    });
    await t.step("a failed write keeps its sums for the next flush", async () => {
      await a.add("k1", 4e12, T0);
      failNext = true;
      await assert.rejects(() => a.flush(), /disk I\/O error/);
      assert.equal((await a.spend("k1", T0)).daily.spent_usd, usd(7e12), "still counted here");
      assert.equal((await b.spend("k1", T0)).daily.spent_usd, usd(3e12));
      await a.flush();
      assert.equal((await b.spend("k1", T0)).daily.spent_usd, usd(7e12));
      assert.equal((await a.spend("k1", T0)).daily.spent_usd, usd(7e12));
    });
  } finally {
    kvA.close();
    kvB.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts writes the spend it batched when it shuts down, so a restart still counts it", async () => {
  const upstream = startFixtureUpstream();
  const dir = await Deno.makeTempDir({ prefix: "sluice-spend-main-" });
  const sluice = await startMain({
    ANTHROPIC_API_KEY: "sk-ant-test-spend",
    ANTHROPIC_BASE_URL: upstream.url,
    SLUICE_API_KEYS: KEY,
    SLUICE_KV_PATH: `${dir}/kv.sqlite3`,
    // Longer than the test: only the shutdown's flush can write the spend.
    SLUICE_STATS_WRITE_MS: "60000",
    SLUICE_LOG_LEVEL: "info", // startMain reads the "listening on" line
  });
  try {
    const answer = await fetch(`${sluice.url}/v1/messages`, ask());
    assert.equal(answer.status, 200, await answer.text());
    const status = await sluice.stop();
    assert.equal(status.code, 0);
    const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
    try {
      const keyId = await keyIdOf(KEY);
      const spend = await kvSpendStore(kv).spend(keyId, Date.now());
      assert.equal(spend.daily.spent_usd, ANSWER_USD);
    } finally {
      kv.close();
    }
  } finally {
    await sluice.stop();
    await upstream.close();
    await Deno.remove(dir, { recursive: true });
  }
});
