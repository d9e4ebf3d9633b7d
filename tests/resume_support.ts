/**
 * What the resume tests share: an app on a replay the test paces itself, two real processes on
 * one KV file, and readers that cut a connection at a given byte.
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import type { manualClock } from "../lib/clock.ts";
import { silentLogger } from "../lib/log.ts";
import { loadFixtures } from "../lib/replay/fixtures.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { memorySink, type TokenUsage } from "../lib/stats/request_summary.ts";
import type { SseEvent } from "../lib/stream/sse.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { tokenUsage } from "../lib/stats/request_summary.ts";
import { FIXTURES_DIR, readFixture, startMain, testConfig } from "./helpers.ts";

/**
 * A replay sleep run by the test, not by time: each paced chunk takes one unit of allowance,
 * and waits while there is none. The upstream's progress is then exactly what the test allows.
 */
export function gatedSleep() {
  let allowance = Infinity;
  const waiters: Array<() => void> = [];
  const release = () => {
    while (allowance > 0 && waiters.length > 0) {
      allowance--;
      waiters.shift()!();
    }
  };
  return {
    sleep(ms: number): Promise<void> {
      if (ms <= 0) return Promise.resolve();
      if (allowance > 0 && waiters.length === 0) {
        allowance--;
        return Promise.resolve();
      }
      return new Promise((resolve) => waiters.push(resolve));
    },
    /** Lets `n` more chunks through (Infinity: all). */
    allow(n: number) {
      allowance = n;
      release();
    },
  };
}

export async function resumeApp(
  env: Record<string, string> = {},
  clock = undefined as
    | ReturnType<typeof manualClock>
    | undefined,
) {
  const gate = gatedSleep();
  const replay = createReplayFetch(await loadFixtures(FIXTURES_DIR), {
    // Every chunk is paced (a wait above 0), so each goes through the gate.
    pace: { ttftMs: 1, tokensPerSecond: 1000, speed: 1 },
    sleep: (ms) => gate.sleep(ms),
  });
  const upstream = createUpstream({
    mode: "replay",
    apiKey: "replay",
    baseURL: "http://replay.test",
    maxRetries: 0,
    fetch: replay,
  });
  const kv = await Deno.openKv(":memory:");
  const stats = memorySink();
  const app = createApp({
    config: testConfig({
      SLUICE_API_KEYS: "key-one,key-two",
      SLUICE_RESUME_FLUSH_MS: "1",
      // The 200 trials make a conversation each, under one key (the default allows 100).
      SLUICE_CONVERSATIONS_PER_KEY: "0",
      ...env,
    }),
    upstream,
    logger: silentLogger,
    stats,
    kv,
    clock,
  });
  const request = (path: string, init: RequestInit & { key?: string } = {}) => {
    const headers = new Headers(init.headers);
    headers.set("x-api-key", init.key ?? "key-one");
    return app.request(path, { ...init, headers });
  };
  const chat = (body: unknown, init: { key?: string; headers?: Record<string, string> } = {}) =>
    request("/chat", {
      method: "POST",
      key: init.key,
      headers: { "content-type": "application/json", accept: "text/event-stream", ...init.headers },
      body: JSON.stringify(body),
    });
  return { app, kv, stats, gate, request, chat };
}

/** The usage a fixture's answer adds up to, from its bytes. */
export async function expectedUsage(fixture: string): Promise<TokenUsage> {
  const accumulator = new EventAccumulator();
  for (const event of decodeAll(await readFixture(`${fixture}.sse`))) accumulator.push(event);
  return tokenUsage(accumulator.end().message?.usage);
}

/** The text of a fixture's answer, from its bytes. */
export async function expectedText(fixture: string): Promise<string> {
  const accumulator = new EventAccumulator();
  for (const event of decodeAll(await readFixture(`${fixture}.sse`))) accumulator.push(event);
  return (accumulator.end().message?.content ?? [])
    .map((block) => (block.type === "text" ? block.text : ""))
    .join("");
}

export function textOf(events: SseEvent[]): string {
  return events.filter((e) => e.event === "text").map((e) => JSON.parse(e.data).text).join("");
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Reads a body until at least `bytes` bytes came, then drops the connection; returns those bytes. */
export async function readThenCut(
  response: Response,
  bytes: number,
  beforeCut = () => {},
): Promise<Uint8Array> {
  const reader = response.body!.getReader();
  const parts: Uint8Array[] = [];
  let seen = 0;
  while (seen < bytes) {
    const { value, done } = await reader.read();
    if (done) break;
    parts.push(value);
    seen += value.length;
  }
  beforeCut();
  await reader.cancel();
  // The client has the first `bytes` bytes only: the rest of the last chunk never arrived.
  return concat(parts).subarray(0, bytes);
}

export async function eventually(predicate: () => boolean | Promise<boolean>, what: string) {
  for (let i = 0; i < 400; i++) {
    if (await predicate()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** Two main.ts processes sharing one KV file (replay, instant TTFT, 20 ms flushes). */
export async function twoInstances(env: Record<string, string>) {
  const dir = await Deno.makeTempDir({ dir: new URL(".", import.meta.url).pathname });
  const shared = {
    SLUICE_KV_PATH: `${dir}/kv.sqlite3`,
    SLUICE_API_KEYS: "key-one,key-two",
    SLUICE_ADMIN_KEY: "admin-key",
    SLUICE_STATS_WRITE_MS: "0",
    SLUICE_LOG_LEVEL: "info", // startMain waits for the "listening on" line
    SLUICE_REPLAY_TTFT_MS: "0",
    SLUICE_RESUME_FLUSH_MS: "20",
    ...env,
  };
  const a = await startMain(shared);
  const b = await startMain(shared);
  return {
    a,
    b,
    async close() {
      await Promise.allSettled([a.stop(), b.stop()]);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

export function post(url: string, body: unknown): Promise<Response> {
  return fetch(`${url}/chat`, {
    method: "POST",
    headers: {
      "x-api-key": "key-one",
      "content-type": "application/json",
      accept: "text/event-stream",
    },
    body: JSON.stringify(body),
  });
}

/** Reads events from `reader` until `count` complete events came. */
export async function readEvents(reader: ReadableStreamDefaultReader<Uint8Array>, count: number) {
  const parts: Uint8Array[] = [];
  for (;;) {
    const events = decodeAll(concat(parts));
    if (events.length >= count) return { events, bytes: concat(parts) };
    const { value, done } = await reader.read();
    if (done) return { events, bytes: concat(parts) };
    parts.push(value);
  }
}
