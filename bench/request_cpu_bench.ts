/**
 * CPU per request, in-process: sluice wired as `main.ts` wires it in live mode (KV stats sink on an
 * in-memory KV, lifecycle), an upstream `fetch` that answers a short stream at once, and
 * `app.fetch` called one request after another. Prints µs of CPU (user + system) and wall time per
 * request. BENCH_NO_STATS=1 leaves the stats sink out; BENCH_SLUICE_ENV adds settings (JSON).
 *
 * Run: deno run --allow-env --allow-read bench/request_cpu_bench.ts [requests]
 */
import process from "node:process";
import { parseConfig } from "../lib/config.ts";
import { openKv } from "../lib/kv.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { benchApp } from "./sluice_app.ts";
import { messageEnd, messageStart, sse } from "./streams.ts";

const requests = Number(Deno.args[0] ?? 20_000);
const answer = new TextEncoder().encode([
  messageStart("msg_bench_request"),
  sse("content_block_start", {
    type: "content_block_start",
    index: 0,
    content_block: { type: "text", text: "" },
  }),
  sse("content_block_delta", {
    type: "content_block_delta",
    index: 0,
    delta: { type: "text_delta", text: "hi" },
  }),
  sse("content_block_stop", { type: "content_block_stop", index: 0 }),
  ...messageEnd(3, "end_turn"),
].join(""));

const config = parseConfig({
  ANTHROPIC_API_KEY: "bench-key",
  ANTHROPIC_BASE_URL: "http://127.0.0.1:9",
  SLUICE_UPSTREAM: "live",
  SLUICE_LOG_LEVEL: "silent",
  SLUICE_KV_PATH: ":memory:",
  HOSTNAME: "127.0.0.1",
  // Experiments, as in bench/gateways.ts: BENCH_SLUICE_ENV='{"SLUICE_BODY_TIMEOUT_MS":"0"}'.
  ...JSON.parse(Deno.env.get("BENCH_SLUICE_ENV") ?? "{}"),
});
const upstream = createUpstream({
  mode: "live",
  apiKey: "bench-key",
  baseURL: "http://127.0.0.1:9",
  fetch: () =>
    Promise.resolve(
      new Response(answer, {
        headers: { "content-type": "text/event-stream", "request-id": "req_bench" },
      }),
    ),
});
const kv = await openKv(config);
const { app, stats } = benchApp({ config, upstream, kv });
const body = JSON.stringify({
  model: "claude-bench",
  max_tokens: 1024,
  stream: true,
  messages: [{ role: "user", content: "Benchmark me." }],
});

async function one() {
  const response = await app.fetch(
    new Request("http://127.0.0.1/v1/messages", {
      method: "POST",
      // With its length, as every request from the wire has it (a Request made in JS has none).
      headers: {
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "content-length": String(body.length),
      },
      body,
    }),
  );
  await response.arrayBuffer();
}

// Every stats write of the requests so far is over (the macrotask lets their records arrive).
const settle = () => new Promise((resolve) => setTimeout(resolve, 0)).then(() => stats?.flush());
for (let i = 0; i < 2000; i++) await one(); // warm-up
await settle();
const cpu = process.cpuUsage();
const started = performance.now();
for (let i = 0; i < requests; i++) await one();
const wallMs = performance.now() - started;
await settle();
const used = process.cpuUsage(cpu);
console.log(
  `${requests} requests: ${((used.user + used.system) / requests).toFixed(0)} µs CPU and ` +
    `${(wallMs * 1000 / requests).toFixed(0)} µs wall per request`,
);
kv.close();
