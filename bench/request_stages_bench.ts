/**
 * Where a request's time goes, stage by stage: sluice (as the request bench's `sluice` path,
 * no gateway keys) on 127.0.0.1 in front of a fake upstream that answers at once, and a client,
 * all in this process on one clock, one request after another (so only one request is ever in
 * flight and every gap is time on that request's path). Per request it stamps:
 *
 * client sent → sluice's first middleware (`startedAt`) → the route hands the request to the
 * upstream client (middleware, body read and parse done) → the client calls `fetch` (its request
 * built) → the upstream's headers back →
 * `app.fetch` returned the Response → the client has the headers → the client has the first text
 * delta; and the same through the floor (`fetch` + `new Response(r.body)`) and the js-copy yardstick
 * (the floor with every chunk through a pull-based JavaScript stream) for comparison.
 *
 * Prints the median of each gap, in µs. Run:
 *   deno run --allow-net=127.0.0.1 --allow-env --allow-read bench/request_stages_bench.ts [requests]
 */
import type { Clock } from "../lib/clock.ts";
import { parseConfig } from "../lib/config.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { benchApp } from "./sluice_app.ts";
import { jsCopyBody } from "./js_copy.ts";
import { messageEnd, messageStart, sse } from "./streams.ts";
import { percentile } from "./report.ts";

const requests = Number(Deno.args[0] ?? 500);
const now = () => performance.now();
const encoder = new TextEncoder();
const answer = encoder.encode(
  messageStart("msg_stages") +
    sse("content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "text", text: "" },
    }) +
    sse("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "text_delta", text: "hi" },
    }) + sse("content_block_stop", { type: "content_block_stop", index: 0 }) +
    messageEnd(1, "end_turn").join(""),
);

const upstreamServer = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (
  request,
) => {
  await request.arrayBuffer();
  return new Response(answer, { headers: { "content-type": "text/event-stream" } });
});
const upstreamUrl = `http://127.0.0.1:${upstreamServer.addr.port}`;

let stamps: Record<string, number> = {};
const clock: Clock = { now: () => performance.timeOrigin + performance.now() };
const stampingClock: Clock = {
  now() {
    stamps.startedAt ??= now();
    return clock.now();
  },
};
const config = parseConfig({
  ANTHROPIC_API_KEY: "bench-key",
  ANTHROPIC_BASE_URL: upstreamUrl,
  SLUICE_UPSTREAM: "live",
  SLUICE_LOG_LEVEL: "silent",
  HOSTNAME: "127.0.0.1",
});
const upstream = createUpstream({
  mode: "live",
  apiKey: "bench-key",
  baseURL: upstreamUrl,
  streamPolicy: { idleTimeoutMs: config.idleTimeoutMs, keepAliveMs: config.keepAliveMs },
  fetch: async (input, init) => {
    stamps.upstreamCalled = now();
    const response = await fetch(input, init);
    stamps.upstreamHeaders = now();
    return response;
  },
});
// Stamps when the route hands the request to the upstream client (before its own work).
const send = upstream.send.bind(upstream);
upstream.send = (request) => {
  stamps.sendCalled = now();
  return send(request);
};
const kv = await Deno.openKv(":memory:");
const { app, stats } = benchApp({ config, upstream, kv, stats: true, clock: stampingClock });
const sluice = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (
  request,
  info,
) => {
  const response = await app.fetch(request, info);
  stamps.responded = now();
  return response;
});
/**
 * A yardstick server: the floor (`fetch` + `new Response(r.body)`), or with `copy` the js-copy
 * yardstick (every chunk through a pull-based JavaScript stream, bench/js_copy.ts).
 */
function yardstick(copy: boolean) {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    stamps.startedAt = now();
    const body = await request.arrayBuffer();
    stamps.upstreamCalled = now();
    const response = await fetch(`${upstreamUrl}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    stamps.upstreamHeaders = now();
    const out = new Response(copy ? jsCopyBody(response.body!) : response.body, {
      status: response.status,
      headers: response.headers,
    });
    stamps.responded = now();
    return out;
  });
}
const floor = yardstick(false);
const jsCopy = yardstick(true);

const body = JSON.stringify({
  model: "claude-bench",
  max_tokens: 16,
  stream: true,
  messages: [{ role: "user", content: "Benchmark me." }],
});

async function one(port: number) {
  stamps = {};
  const sent = now();
  const response = await fetch(`http://127.0.0.1:${port}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body,
  });
  const headers = now();
  let first: number | undefined;
  for await (const chunk of response.body!) {
    if (first === undefined && new TextDecoder().decode(chunk).includes("text_delta")) {
      first = now();
    }
  }
  return {
    "client → first middleware": stamps.startedAt - sent,
    "first middleware → route calls upstream": (stamps.sendCalled ?? stamps.upstreamCalled) -
      stamps.startedAt,
    "route calls upstream → client calls fetch": stamps.upstreamCalled -
      (stamps.sendCalled ?? stamps.upstreamCalled),
    "upstream fetch → its headers": stamps.upstreamHeaders - stamps.upstreamCalled,
    "its headers → Response returned": stamps.responded - stamps.upstreamHeaders,
    "Response returned → client has headers": headers - stamps.responded,
    "client has headers → first text delta": first! - headers,
    "whole: sent → first text delta": first! - sent,
  };
}

const servers = { sluice, floor, "js-copy": jsCopy };
for (const { addr } of Object.values(servers)) {
  for (let i = 0; i < 200; i++) await one(addr.port); // warm-up
}
const samples: Record<string, Record<string, number[]>> = {};
for (let i = 0; i < requests; i++) {
  for (const [name, { addr }] of Object.entries(servers)) {
    for (const [stage, ms] of Object.entries(await one(addr.port))) {
      samples[name] ??= {};
      (samples[name][stage] ??= []).push(ms);
    }
  }
}
console.log(`${requests} requests each, interleaved; median µs per stage`);
const names = Object.keys(servers);
console.log(`${"stage".padEnd(42)} ${names.map((name) => name.padStart(8)).join(" ")}`);
for (const stage of Object.keys(samples.sluice)) {
  const med = (name: string) => (percentile(samples[name][stage], 50) * 1000).toFixed(0);
  console.log(`${stage.padEnd(42)} ${names.map((name) => med(name).padStart(8)).join(" ")}`);
}
await stats?.flush();
await sluice.shutdown();
await floor.shutdown();
await jsCopy.shutdown();
await upstreamServer.shutdown();
kv.close();
