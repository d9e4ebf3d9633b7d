/**
 * Support for the stats tests: an app whose replay upstream advances a manual clock instead of
 * sleeping (so every time figure is exactly what the fixture's schedule says), and the figures
 * each request should leave, computed from the fixture bytes and what the client received.
 */
import type { Hono } from "hono";
import type { AppDeps } from "../lib/app.ts";
import type { AppEnv } from "../lib/app_env.ts";
import { createApp } from "../lib/app.ts";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { manualClock } from "../lib/clock.ts";
import { silentLogger } from "../lib/log.ts";
import type { Pace } from "../lib/replay/pace.ts";
import { schedule } from "../lib/replay/pace.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import type { TokenUsage } from "../lib/stats/request_summary.ts";
import { tokenUsage } from "../lib/stats/request_summary.ts";
import { createSseDecoder, decodeAll } from "../lib/stream/sse.ts";
import type { KvStatsOptions } from "../lib/stats/kv_stats.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { projectFixtures, testConfig } from "./helpers.ts";

/** A fixed start, on the hour, so windows hold whole test runs. */
export const T0 = Date.UTC(2026, 0, 15, 12, 0, 0);
/** Replay pace: a visible TTFT and a steady token rate. */
export const PACE: Pace = { ttftMs: 350, tokensPerSecond: 80, speed: 1 };
/** The model the tests ask for. */
export const MODEL = "claude-test-model";

/** Builds an app with a KV stats sink on a replay upstream driven by a manual clock. */
export async function timedStatsApp(options: {
  kv: Deno.Kv;
  clock?: ReturnType<typeof manualClock>;
  env?: Record<string, string>;
  stats?: Partial<KvStatsOptions>;
  app?: Partial<AppDeps>;
}) {
  const clock = options.clock ?? manualClock(T0);
  const fetch = createReplayFetch(await projectFixtures(), {
    pace: PACE,
    // Replay "waits" by moving the clock: TTFT and totals are exactly the schedule's.
    sleep: (ms) => {
      clock.advance(ms);
      return Promise.resolve();
    },
  });
  const upstream = createUpstream({
    mode: "replay",
    apiKey: "replay",
    baseURL: "http://replay.test",
    maxRetries: 0,
    fetch,
  });
  // The tests' model is labelled by name, as main.ts does for SLUICE_DEFAULT_MODEL.
  const stats = createKvStats({
    kv: options.kv,
    clock,
    logger: silentLogger,
    knownModels: [MODEL],
    ...options.stats,
  });
  const app = createApp({
    config: testConfig(options.env),
    upstream,
    clock,
    logger: silentLogger,
    stats,
    ...options.app,
  });
  return { app, stats, clock };
}

/** What one request should leave in the stats. */
export interface Expected {
  fixture: string;
  streaming: boolean;
  outcome: string;
  status: number;
  model: string;
  ttftMs: number | null;
  totalMs: number;
  upstreamTtftMs: number | null;
  usage: TokenUsage;
  events: Record<string, number>;
}

const NO_USAGE = tokenUsage(undefined);

/** A Messages request for `fixture`. */
export function fixtureRequest(
  fixture: string,
  streaming: boolean,
  headers: Record<string, string> = {},
  content = "hello",
): Request {
  return new Request("http://sluice.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json", "x-sluice-fixture": fixture, ...headers },
    body: JSON.stringify({
      model: MODEL,
      max_tokens: 256,
      stream: streaming,
      messages: [{ role: "user", content }],
    }),
  });
}

/** Sends `fixture` through `app`, reads the whole answer, and says what stats should record. */
export async function sendFixture(
  app: Hono<AppEnv>,
  fixture: string,
  streaming: boolean,
): Promise<Expected> {
  const response = await app.request(fixtureRequest(fixture, streaming));
  const received = new Uint8Array(await response.arrayBuffer());
  return await expectedFor(fixture, streaming, response.status, received);
}

/** The figures a request for `fixture` implies (see the module doc). */
export async function expectedFor(
  name: string,
  streaming: boolean,
  status: number,
  received: Uint8Array,
): Promise<Expected> {
  const fixture = (await projectFixtures()).fixtures.get(name)!;
  const base = { fixture: name, streaming, status };
  if (fixture.http) {
    // An HTTP error is answered at once: nothing to wait for, nothing used.
    const body = fixture.http.body as { error: { type: string } };
    return {
      ...base,
      outcome: body.error.type,
      model: MODEL,
      ttftMs: 0,
      totalMs: 0,
      upstreamTtftMs: 0,
      usage: NO_USAGE,
      events: {},
    };
  }
  const chunks = schedule(fixture, PACE);
  const lastAt = chunks.at(-1)?.atMs ?? 0;
  if (!streaming) {
    // Replay answers a non-streaming request after the whole stream's time; the body is what
    // the client got (a message, or the error the stream ended with).
    const body = JSON.parse(new TextDecoder().decode(received));
    const ok = status === 200;
    return {
      ...base,
      outcome: ok ? "ok" : body.error.type,
      model: ok ? body.model : MODEL,
      ttftMs: lastAt,
      totalMs: lastAt,
      upstreamTtftMs: lastAt,
      usage: ok ? tokenUsage(body.usage) : NO_USAGE,
      events: {},
    };
  }
  const firstDelta = chunks.find((chunk) =>
    decodeAll(chunk.bytes).some((event) => event.event === "content_block_delta")
  );
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((event) => accumulator.push(event));
  decoder.feed(fixture.sse!);
  decoder.end();
  const result = accumulator.end();
  const message = result.message as unknown as { usage?: unknown } | null;
  return {
    ...base,
    outcome: result.error ? result.error.type : result.complete ? "ok" : "incomplete",
    // Replay's answer names the requested model, whatever the recording says.
    model: MODEL,
    ttftMs: firstDelta ? firstDelta.atMs : null,
    totalMs: lastAt,
    upstreamTtftMs: firstDelta ? firstDelta.atMs : null,
    usage: tokenUsage(message?.usage),
    events: result.events,
  };
}

/** Nearest-rank percentile. */
export function exactQuantile(samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.max(1, Math.ceil(q * sorted.length)) - 1];
}

/** Sums numbers by key. */
export function tally<T>(items: T[], key: (item: T) => string, n: (item: T) => number = () => 1) {
  const out: Record<string, number> = {};
  for (const item of items) out[key(item)] = (out[key(item)] ?? 0) + n(item);
  return out;
}

/** A temporary KV file path (the directory is removed by the returned cleanup). */
export async function tempKvPath(): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "sluice-stats-" });
  return {
    path: `${dir}/kv.sqlite3`,
    cleanup: () => Deno.remove(dir, { recursive: true }),
  };
}
