/**
 * One gateway under test, in its own process so its CPU time and memory are its own (a
 * subprocess of bench/gateway_bench.ts):
 *
 * - `sluice`: the real app, wired as main.ts wires it in live mode (SDK upstream pointed at the
 *   fake, defaults for keep-alives and idle timeout, stats into Deno KV: in memory, or the file
 *   BENCH_KV_PATH names).
 * - `sluice-prod`: the same in the production configuration (gateway keys, rate and concurrency
 *   limits, stats).
 * - `sluice-guarded`: `sluice` behind the connection guard (lib/http/connection_guard.ts, the
 *   TCP front for the header deadline and the cap on connections per address), as main.ts
 *   serves it with the guard's settings on; `sluice` itself is `Deno.serve` alone.
 * - `passthrough`: the floor, a proxy that copies the upstream's bytes and parses nothing.
 * - `sdk-hono`: the usual alternative, a Hono route that wraps the SDK's `MessageStream`
 *   (`client.messages.stream`) and re-sends each event with Hono's `streamSSE`.
 *
 * Besides the proxied `POST /v1/messages`, every gateway answers `GET /__bench/usage` with its
 * process's CPU time and memory (no sampling timer: an idle gateway must cost nothing).
 *
 * Experiments on the sluice gateway: BENCH_SLUICE_ENV (JSON of extra environment variables, e.g.
 * '{"SLUICE_KEEPALIVE_MS":"0"}') and BENCH_NO_STATS=1 (no stats sink).
 *
 * Run: deno run --allow-net=127.0.0.1 --allow-env --allow-read --allow-write bench/gateways.ts
 *   <gateway> <upstream URL>
 */
import process from "node:process";
import Anthropic from "@anthropic-ai/sdk";
import { Hono } from "hono";
import { streamSSE } from "hono/streaming";
import { parseConfig } from "../lib/config.ts";
import { openKv } from "../lib/kv.ts";
import { createLogger } from "../lib/log.ts";
import { createUpstreamFromConfig } from "../lib/proxy/upstream_from_config.ts";
import { benchApp } from "./sluice_app.ts";
import { jsCopyBody } from "./js_copy.ts";

/** What `/__bench/usage` answers. */
export interface ProxyUsage {
  /** User plus system CPU time of the process, in microseconds. */
  cpuMicros: number;
  rss: number;
  heapUsed: number;
}

type Handler = (request: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>;

/**
 * The production configuration of the request bench's `sluice-prod` path: gateway keys, limits
 * generous enough never to refuse the bench, stats on (they are on in every configuration).
 */
export const PRODUCTION_ENV: Readonly<Record<string, string>> = {
  SLUICE_API_KEYS: "bench-key,other-key",
  SLUICE_RATE_LIMIT_RPM: "1000000",
  SLUICE_MAX_CONCURRENT_STREAMS: "100000",
};

async function sluice(upstreamUrl: string, production: boolean): Promise<Handler> {
  const config = parseConfig({
    ANTHROPIC_API_KEY: "bench-key",
    ANTHROPIC_BASE_URL: upstreamUrl,
    SLUICE_UPSTREAM: "live",
    SLUICE_LOG_LEVEL: "silent",
    // A KV file (fresh, or a copy of bench/kv_history.ts's month) when given, as main.ts opens.
    SLUICE_KV_PATH: Deno.env.get("BENCH_KV_PATH") ?? ":memory:",
    HOSTNAME: "127.0.0.1",
    ...(production ? PRODUCTION_ENV : {}),
    // Experiments (e.g. keep-alives off): BENCH_SLUICE_ENV='{"SLUICE_KEEPALIVE_MS":"0"}'.
    ...JSON.parse(Deno.env.get("BENCH_SLUICE_ENV") ?? "{}"),
  });
  const upstream = await createUpstreamFromConfig(config);
  const { app } = benchApp({ config, upstream, kv: await openKv(config) });
  return (request, info) => app.fetch(request, info);
}

function passthrough(upstreamUrl: string): Handler {
  return async (request) => {
    const upstream = await fetch(new URL(new URL(request.url).pathname, upstreamUrl), {
      method: request.method,
      headers: { "content-type": request.headers.get("content-type") ?? "application/json" },
      body: await request.arrayBuffer(),
    });
    // No `signal: request.signal`: Deno cancels the returned body when the client goes away,
    // and that cancels the upstream fetch.
    return new Response(upstream.body, { status: upstream.status, headers: upstream.headers });
  };
}

/**
 * Not a path of the comparison, a yardstick for the analysis: like `passthrough`, but every chunk
 * goes through JavaScript (a pull-based ReadableStream), as it must in any gateway that looks at
 * the bytes. The gap between the two is what touching a chunk in JS costs in Deno.
 */
function jsCopy(upstreamUrl: string): Handler {
  const forward = passthrough(upstreamUrl);
  return async (request, info) => {
    const response = await forward(request, info);
    const body = jsCopyBody(response.body!);
    return new Response(body, { status: response.status, headers: response.headers });
  };
}

function sdkHono(upstreamUrl: string): Handler {
  const client = new Anthropic({ apiKey: "bench-key", baseURL: upstreamUrl, logLevel: "off" });
  const app = new Hono();
  app.post("/v1/messages", async (c) => {
    const { stream: _stream, ...params } = await c.req.json();
    return streamSSE(c, async (sse) => {
      const messages = client.messages.stream(params);
      sse.onAbort(() => messages.abort());
      for await (const event of messages) {
        await sse.writeSSE({ event: event.type, data: JSON.stringify(event) });
      }
    });
  });
  return (request) => app.fetch(request);
}

const [gateway, upstreamUrl] = Deno.args;
const handler = gateway === "sluice" || gateway === "sluice-prod" || gateway === "sluice-guarded"
  ? await sluice(upstreamUrl, gateway === "sluice-prod")
  : gateway === "passthrough"
  ? passthrough(upstreamUrl)
  : gateway === "js-copy"
  ? jsCopy(upstreamUrl)
  : gateway === "sdk-hono"
  ? sdkHono(upstreamUrl)
  : undefined;
if (!handler || !upstreamUrl) {
  console.error(
    "usage: gateways.ts sluice|sluice-prod|sluice-guarded|passthrough|js-copy|sdk-hono <upstream URL>",
  );
  Deno.exit(2);
}

// Exit on SIGTERM (the bench's stop), so `--cpu-prof` writes its profile.
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));

const serve = (request: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) => {
  if (new URL(request.url).pathname === "/__bench/usage") {
    const cpu = process.cpuUsage();
    const memory = Deno.memoryUsage();
    const usage: ProxyUsage = {
      cpuMicros: cpu.user + cpu.system,
      rss: memory.rss,
      heapUsed: memory.heapUsed,
    };
    return Response.json(usage);
  }
  return handler(request, info);
};
const onListen = ({ port }: Deno.NetAddr) => console.log(JSON.stringify({ port }));
if (gateway === "sluice-guarded") {
  const config = parseConfig({
    SLUICE_HEADER_TIMEOUT_MS: "10000",
    SLUICE_MAX_CONNECTIONS_PER_ADDRESS: "256",
  });
  // Imported here, not at the top: an older lib/ (`@before`) may not have the guard.
  const { serveGuarded } = await import("../lib/http/connection_guard.ts");
  serveGuarded({
    hostname: "127.0.0.1",
    port: 0,
    headerTimeoutMs: config.headerTimeoutMs,
    maxConnectionsPerAddress: config.maxConnectionsPerAddress,
    logger: createLogger({ level: "silent" }),
    onListen,
  }, serve);
} else {
  Deno.serve({ hostname: "127.0.0.1", port: 0, onListen }, serve);
}
