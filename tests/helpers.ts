/**
 * Shared test helpers: the SDK oracle, chunk splitters, and the fake upstream.
 */
import Anthropic from "@anthropic-ai/sdk";

/** The project's own recordings. */
export const FIXTURES_DIR = new URL("../fixtures/", import.meta.url);

/** A small seeded PRNG (mulberry32), so random splits are reproducible from the seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Splits bytes into chunks of `size` bytes. */
export function splitEvery(bytes: Uint8Array, size: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.subarray(i, i + size));
  return chunks;
}

/** Splits bytes at random offsets (chunks of 1 to `max` bytes). */
export function splitRandom(bytes: Uint8Array, random: () => number, max = 64): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let i = 0;
  while (i < bytes.length) {
    const size = 1 + Math.floor(random() * max);
    chunks.push(bytes.subarray(i, i + size));
    i += size;
  }
  return chunks;
}

/** A ReadableStream that yields the given chunks. */
export function streamOf(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]);
      else controller.close();
    },
  });
}

/** What the official SDK makes of a byte stream. */
export interface OracleResult {
  /** `finalMessage()`, or null when it rejected. */
  finalMessage: unknown | null;
  /** The last snapshot the SDK showed (its `currentMessage`, kept after errors). */
  lastSnapshot: unknown | null;
  /** The error the stream emitted, if any. */
  error: { type: string | null; message: string } | null;
  /** Text deltas reported by the `text` event, in order. */
  texts: string[];
}

/**
 * Replays bytes through `client.messages.stream()` of `@anthropic-ai/sdk` with a fake fetch: the
 * oracle the accumulator is compared with. Results are JSON round-tripped, minus the SDK-only
 * `parsed_output` field, so they compare as a client would see them.
 */
export async function sdkOracle(chunks: Uint8Array[]): Promise<OracleResult> {
  const client = new Anthropic({
    apiKey: "test-key",
    maxRetries: 0,
    fetch: () =>
      Promise.resolve(
        new Response(streamOf(chunks), {
          headers: { "content-type": "text/event-stream", "request-id": "req_oracle" },
        }),
      ),
  });
  const stream = client.messages.stream({ model: "m", max_tokens: 1, messages: [] });
  let snapshot: unknown = null;
  let error: OracleResult["error"] = null;
  const texts: string[] = [];
  stream.on("streamEvent", (_event, snap) => (snapshot = snap));
  stream.on("text", (delta) => texts.push(delta));
  stream.on("error", (err) => {
    const e = err as { type?: string | null; message: string };
    error = { type: e.type ?? null, message: e.message };
  });
  let finalMessage: unknown = null;
  try {
    finalMessage = await stream.finalMessage();
  } catch {
    finalMessage = null;
  }
  return {
    finalMessage: finalMessage ? clean(finalMessage) : null,
    lastSnapshot: snapshot ? clean(snapshot) : null,
    error,
    texts,
  };
}

/** A JSON round trip without the SDK's `parsed_output` helper field. */
export function clean(value: unknown): unknown {
  const json = JSON.parse(JSON.stringify(value));
  if (json && typeof json === "object") delete json.parsed_output;
  return json;
}

// ---------------------------------------------------------------------------------------------
// Fakes: an upstream on 127.0.0.1, and apps built on replay.

import { createApp } from "../lib/app.ts";
import type { AppDeps } from "../lib/app.ts";
import { type Config, parseConfig } from "../lib/config.ts";
import { silentLogger } from "../lib/log.ts";
import { type FixtureSet, loadFixtures } from "../lib/replay/fixtures.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { createUpstream, type Upstream } from "../lib/proxy/upstream.ts";

/** A request the fake upstream received. */
export interface SeenRequest {
  method: string;
  path: string;
  /** The query string as received, with its `?` (empty when none). */
  search: string;
  headers: Headers;
  /** The body as text; empty when the fake was started with `readBodies: false`. */
  body: string;
}

/** A fake Anthropic API on 127.0.0.1. */
export interface FakeUpstream {
  url: string;
  requests: SeenRequest[];
  close(): Promise<void>;
}

/** Starts a fake upstream that answers with `respond`. */
export function startFakeUpstream(
  respond: (request: Request, seen: SeenRequest) => Response | Promise<Response>,
  options: { readBodies?: boolean } = {},
): FakeUpstream {
  const requests: SeenRequest[] = [];
  const readBodies = options.readBodies ?? true;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    const seen: SeenRequest = {
      method: req.method,
      path: url.pathname,
      search: url.search,
      headers: req.headers,
      // Streamed uploads are read by `respond` itself (a copy here would hold them in memory).
      body: readBodies ? await req.clone().text() : "",
    };
    requests.push(seen);
    return respond(req, seen);
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    requests,
    close: () => server.shutdown(),
  };
}

/**
 * A fake upstream that answers `POST /v1/messages` from the project's fixtures: the one the
 * request's model names (`fixture/NAME`), else `fallback` (for clients whose model cannot be
 * chosen freely). A streamed request gets the fixture's SSE bytes, a non-streamed one its JSON.
 */
export function startFixtureUpstream(
  options: { fallback?: string; chunkSize?: number } = {},
): FakeUpstream {
  return startFakeUpstream(async (request, seen) => {
    const set = await projectFixtures();
    const body = JSON.parse(seen.body || "{}");
    const named = /^fixture\/(.+)$/.exec(String(body.model))?.[1];
    const fixture = set.fixtures.get(named ?? options.fallback ?? set.defaultFixture);
    if (!fixture || request.method !== "POST" || !seen.path.startsWith("/v1/messages")) {
      return Response.json(
        { type: "error", error: { type: "not_found_error", message: "no fixture" } },
        { status: 404 },
      );
    }
    if (fixture.http) {
      return Response.json(fixture.http.body, {
        status: fixture.http.status,
        headers: fixture.http.headers,
      });
    }
    if (body.stream) return sseResponse(fixture.sse!, { chunkSize: options.chunkSize ?? 13 });
    return new Response(fixture.json ?? "{}", {
      headers: { "content-type": "application/json", "request-id": "req_fake_json" },
    });
  });
}

/** Serves `bytes` as an SSE response, `chunkSize` bytes at a time. */
export function sseResponse(
  bytes: Uint8Array,
  options: { chunkSize?: number; headers?: Record<string, string> } = {},
): Response {
  const chunks = options.chunkSize ? splitEvery(bytes, options.chunkSize) : [bytes];
  return new Response(streamOf(chunks), {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "request-id": "req_fake_upstream",
      ...options.headers,
    },
  });
}

/** Reads a fixture of the project. */
export function readFixture(name: string): Promise<Uint8Array> {
  return Deno.readFile(new URL(name, FIXTURES_DIR));
}

let fixtureSet: Promise<FixtureSet> | undefined;
/** The project's fixtures, loaded once. */
export function projectFixtures(): Promise<FixtureSet> {
  return fixtureSet ??= loadFixtures(FIXTURES_DIR);
}

/** A Config for tests: no key, replay, plus overrides (as environment strings). */
export function testConfig(env: Record<string, string> = {}): Config {
  return parseConfig({ SLUICE_LOG_LEVEL: "silent", ...env });
}

/** A replay upstream that also keeps the body of every request it is sent, in `sent`. */
export function recordingUpstream(replay: typeof fetch, sent: unknown[]): Upstream {
  return createUpstream({
    mode: "replay",
    apiKey: "replay",
    baseURL: "http://replay.test",
    maxRetries: 0,
    fetch: async (input, init) => {
      sent.push(await new Request(input, init).json());
      return replay(input, init);
    },
  });
}

/** A live upstream (no retries) that answers every call at once with `bytes` as `contentType`. */
export function answeringUpstream(bytes: Uint8Array, contentType: string): Upstream {
  return createUpstream({
    mode: "live",
    apiKey: "sk-ant-test",
    baseURL: "http://upstream.test",
    maxRetries: 0,
    fetch: () =>
      Promise.resolve(new Response(bytes.slice(), { headers: { "content-type": contentType } })),
  });
}

/** An upstream that replays the project's fixtures at once (no pacing). */
export async function instantReplayUpstream(): Promise<Upstream> {
  return createUpstream({
    mode: "replay",
    apiKey: "replay",
    baseURL: "http://replay.test",
    maxRetries: 0,
    fetch: createReplayFetch(await projectFixtures(), {
      pace: { ttftMs: 0, tokensPerSecond: 1e9, speed: 0 },
    }),
  });
}

/** An app on instant replay, with overridable deps. */
export async function replayApp(overrides: Partial<AppDeps> = {}) {
  return createApp({
    config: testConfig(),
    upstream: await instantReplayUpstream(),
    logger: silentLogger,
    ...overrides,
  });
}

/** The server key the live-mode test apps send upstream. */
export const TEST_SERVER_KEY = "sk-ant-test-upstream-key";

/**
 * sluice in live mode in front of `upstreamUrl` (no retries), plus config overrides (as
 * environment strings) and app deps (a stats sink, say).
 */
export function liveApp(
  upstreamUrl: string,
  env: Record<string, string> = {},
  overrides: Partial<AppDeps> = {},
) {
  return createApp({
    config: testConfig({
      ANTHROPIC_API_KEY: TEST_SERVER_KEY,
      ANTHROPIC_BASE_URL: upstreamUrl,
      ...env,
    }),
    upstream: createUpstream({
      mode: "live",
      apiKey: TEST_SERVER_KEY,
      baseURL: upstreamUrl,
      maxRetries: 0,
    }),
    logger: silentLogger,
    ...overrides,
  });
}

/** Serves `app` on 127.0.0.1 on a free port. */
export function serveOnLoopback(
  app: { fetch: (request: Request) => Response | Promise<Response> },
): { url: string; close(): Promise<void> } {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  return { url: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

/** main.ts, for tests that start it as a process. */
export const MAIN_PATH: string = new URL("../main.ts", import.meta.url).pathname;
const MAIN = MAIN_PATH;

/**
 * Starts main.ts as a real process (as `deno task start` runs it) on a free loopback port;
 * resolves once it says where it listens.
 */
export async function startMain(env: Record<string, string>) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net=127.0.0.1", "--allow-env", "--allow-read", "--allow-write", MAIN],
    env: { NO_COLOR: "1", PORT: "0", HOSTNAME: "127.0.0.1", ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  // What it writes to stderr, read as it comes (a full pipe would block the process).
  let errors = "";
  const errorLines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  const errorsRead = (async () => {
    for (let r = await errorLines.read(); !r.done; r = await errorLines.read()) errors += r.value;
  })().catch(() => {});
  let seen = "";
  for (;;) {
    const { value, done } = await lines.read();
    if (done) break;
    seen += value;
    const match = /listening on (http:\/\/[^\s]+)/.exec(seen);
    if (match) {
      // Keep reading stdout too, so `seen` has the whole log.
      const linesRead = (async () => {
        for (let r = await lines.read(); !r.done; r = await lines.read()) seen += r.value;
      })().catch(() => {});
      return {
        url: match[1],
        pid: child.pid,
        seen: () => seen,
        /** Its stderr so far. */
        errors: () => errors,
        /** Resolves when the process has exited. */
        status: child.status,
        /** Sends SIGTERM (if it still runs) and waits for the exit and the last output. */
        async stop(): Promise<Deno.CommandStatus> {
          try {
            child.kill("SIGTERM");
          } catch {
            // Already gone (a test killed it with SIGKILL): its pipes still need closing.
          }
          const status = await child.status;
          await Promise.all([linesRead, errorsRead]);
          return status;
        },
      };
    }
  }
  await errorLines.cancel();
  await errorsRead;
  const status = await child.status;
  throw new Error(`main.ts exited (${status.code}) before listening: ${seen}`);
}

/**
 * A `fetch` on its own connection pool, and `close` to drop its kept-alive connections. Under
 * Deno 2.5, a server's graceful shutdown waited ~90 s for the connections some clients (LangChain,
 * the AI SDK) leave open on the global pool; the client tests close theirs before the servers.
 */
export function ownConnections(
  options: Deno.CreateHttpClientOptions = {},
): { fetch: typeof globalThis.fetch; close(): void } {
  const client = Deno.createHttpClient(options);
  // `Response` on the function tells the official SDK which Response class this fetch returns;
  // without it the SDK's first upload probes with `fetch("data:,")` and never reads that body,
  // which Deno's resource sanitizer reports as a leak in whichever test uploads first.
  const ownFetch = Object.assign(
    (input: RequestInfo | URL, init?: RequestInit) => fetch(input, { ...init, client }),
    { Response },
  );
  return { fetch: ownFetch, close: () => client.close() };
}

/**
 * `kv` with every atomic operation handed to `adapt` before it is used (to spy on its `set`s,
 * to hold its `commit`); everything else is `kv`'s own.
 */
export function kvWithAtomic(
  kv: Deno.Kv,
  adapt: (operation: Deno.AtomicOperation) => void,
): Deno.Kv {
  return new Proxy(kv, {
    get(target, name) {
      if (name === "atomic") {
        return () => {
          const operation = target.atomic();
          adapt(operation);
          return operation;
        };
      }
      const value = Reflect.get(target, name);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}
