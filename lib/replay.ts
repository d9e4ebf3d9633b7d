/**
 * Replay: recorded streams served as if they came from the API. This is sluice's embedded
 * default upstream (no `ANTHROPIC_API_KEY` needed) and the tests' network-free upstream.
 *
 * `createReplayFetch` returns a `fetch` that answers `POST /v1/messages` from a fixture set. It is
 * injected into the same SDK client live mode uses, so replay exercises the same code path. It
 * also answers `GET /v1/models` (the manifest's `models`) and `POST /v1/messages/count_tokens`
 * (an estimate: see {@link estimateInputTokens}).
 *
 * A fixture `NAME` is up to four files in the fixtures folder:
 * - `NAME.sse`: the exact bytes of a streamed response body;
 * - `NAME.timing.json`: optional, written by `deno task record`: when each received chunk arrived,
 *   `{"chunks":[{"at_ms":412.5,"bytes":183},…]}` (bytes in order, times from request start);
 * - `NAME.json`: optional, the body a `stream: false` request gets (otherwise it is accumulated
 *   from the `.sse`);
 * - `NAME.http.json`: instead of the above, an HTTP error `{"status","headers","body"}`.
 * `manifest.json` says which fixture answers which request (see {@link pickFixture}).
 */
import { EventAccumulator } from "./accumulator.ts";
import { errorBody, errorTypeForStatus } from "./errors.ts";
import { createSseDecoder, decodeAll } from "./sse.ts";
import { chatCompletionsReplay } from "./openai_replay.ts";

/** One recorded answer. */
export interface Fixture {
  name: string;
  sse?: Uint8Array;
  timing?: TimingChunk[];
  json?: string;
  http?: { status: number; headers: Record<string, string>; body: unknown };
}

/** One chunk of a recorded stream: its size and when it arrived. */
export interface TimingChunk {
  at_ms: number;
  bytes: number;
}

/** A rule of `manifest.json`: the first rule that matches a request picks its fixture. */
export interface FixtureRule {
  fixture: string;
  description?: string;
  /** Matches when the last user message contains any of these (case-insensitive). */
  keywords?: string[];
  /** Matches only requests with (true) or without (false) `tools`. */
  tools?: boolean;
  /** Matches only requests with (true) or without (false) `thinking` enabled. */
  thinking?: boolean;
  /** Matches only requests whose `max_tokens` is at most this. */
  max_tokens_at_most?: number;
}

/** A model as `GET /v1/models` lists it. */
export interface ModelInfo {
  type: "model";
  id: string;
  display_name: string;
  created_at: string;
}

/** All fixtures of a folder and the manifest's rules. */
export interface FixtureSet {
  fixtures: Map<string, Fixture>;
  rules: FixtureRule[];
  /** The fixture for a request no rule matches. */
  defaultFixture: string;
  /** What `GET /v1/models` answers (the manifest's `models`; none without one). */
  models: ModelInfo[];
}

/** Reads a fixtures folder. */
export async function loadFixtures(dir: string | URL): Promise<FixtureSet> {
  const base = typeof dir === "string"
    ? new URL(`file://${dir.endsWith("/") ? dir : dir + "/"}`)
    : dir;
  const fixtures = new Map<string, Fixture>();
  const get = (name: string) => {
    let fixture = fixtures.get(name);
    if (!fixture) fixtures.set(name, fixture = { name });
    return fixture;
  };
  for await (const entry of Deno.readDir(base)) {
    if (!entry.isFile) continue;
    const file = new URL(entry.name, base);
    const match = /^(.+?)\.(sse|timing\.json|http\.json|json)$/.exec(entry.name);
    if (!match || entry.name === "manifest.json") continue;
    const [, name, kind] = match;
    if (kind === "sse") get(name).sse = await Deno.readFile(file);
    else if (kind === "timing.json") {
      get(name).timing = JSON.parse(await Deno.readTextFile(file)).chunks;
    } else if (kind === "http.json") get(name).http = JSON.parse(await Deno.readTextFile(file));
    else get(name).json = await Deno.readTextFile(file);
  }
  let rules: FixtureRule[] = [];
  let defaultFixture = "default";
  let models: ModelInfo[] = [];
  try {
    const manifest = JSON.parse(await Deno.readTextFile(new URL("manifest.json", base)));
    rules = manifest.rules ?? [];
    defaultFixture = manifest.default ?? defaultFixture;
    models = manifest.models ?? [];
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  for (const rule of rules) {
    if (!fixtures.has(rule.fixture)) {
      throw new Error(`fixtures/manifest.json names "${rule.fixture}", which has no files`);
    }
  }
  if (!fixtures.has(defaultFixture)) {
    // Without a manifest, any fixture will do as the default: the first by name.
    const first = [...fixtures.keys()].sort()[0];
    if (!first) throw new Error(`no fixtures in ${base.pathname}`);
    defaultFixture = first;
  }
  return { fixtures, rules, defaultFixture, models };
}

/** The text of the last user message of a Messages request body. */
export function lastUserText(body: Record<string, unknown>): string {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  for (let i = messages.length - 1; i >= 0; i--) {
    const message = messages[i] as { role?: unknown; content?: unknown };
    if (message?.role !== "user") continue;
    if (typeof message.content === "string") return message.content;
    if (Array.isArray(message.content)) {
      return message.content
        .map((block: { type?: unknown; text?: unknown }) =>
          block?.type === "text" && typeof block.text === "string" ? block.text : ""
        )
        .join(" ");
    }
    return "";
  }
  return "";
}

/**
 * Picks the fixture for a request, deterministically:
 * 1. the `x-sluice-fixture` header, when given, names it;
 * 2. otherwise the first manifest rule whose conditions all hold;
 * 3. otherwise the manifest's default.
 */
export function pickFixture(
  set: FixtureSet,
  body: Record<string, unknown>,
  requested?: string | null,
): Fixture | undefined {
  if (requested) return set.fixtures.get(requested);
  const text = lastUserText(body).toLowerCase();
  const hasTools = Array.isArray(body.tools) && body.tools.length > 0;
  const thinking = body.thinking as { type?: string } | undefined;
  const hasThinking = Boolean(thinking && thinking.type && thinking.type !== "disabled");
  const maxTokens = typeof body.max_tokens === "number" ? body.max_tokens : Infinity;
  for (const rule of set.rules) {
    if (rule.tools !== undefined && rule.tools !== hasTools) continue;
    if (rule.thinking !== undefined && rule.thinking !== hasThinking) continue;
    if (rule.max_tokens_at_most !== undefined && maxTokens > rule.max_tokens_at_most) continue;
    if (rule.keywords && !rule.keywords.some((k) => text.includes(k.toLowerCase()))) continue;
    return set.fixtures.get(rule.fixture);
  }
  return set.fixtures.get(set.defaultFixture);
}

/** How fast replay serves fixtures that have no recorded timing. */
export interface Pace {
  /** Delay before the first content delta (and the events before it), in ms. */
  ttftMs: number;
  /** Output rate afterwards; a delta's tokens are estimated as its characters / 4. */
  tokensPerSecond: number;
  /** Multiplies the speed of every fixture (recorded or not); 0 serves everything at once. */
  speed: number;
}

/** A chunk of a fixture and when to send it, in ms from the request. */
export interface ScheduledChunk {
  atMs: number;
  bytes: Uint8Array;
}

/** Splits a fixture into timed chunks: its recorded timing, or events paced by `pace`. */
export function schedule(fixture: Fixture, pace: Pace): ScheduledChunk[] {
  const bytes = fixture.sse ?? new Uint8Array();
  const scale = pace.speed === 0 ? 0 : 1 / pace.speed;
  if (fixture.timing?.length) {
    const chunks: ScheduledChunk[] = [];
    let offset = 0;
    for (const { at_ms, bytes: size } of fixture.timing) {
      chunks.push({ atMs: at_ms * scale, bytes: bytes.subarray(offset, offset + size) });
      offset += size;
    }
    if (offset < bytes.length) {
      chunks.push({ atMs: chunks.at(-1)?.atMs ?? 0, bytes: bytes.subarray(offset) });
    }
    return chunks;
  }
  const chunks: ScheduledChunk[] = [];
  let at = pace.ttftMs;
  let seenDelta = false;
  for (const segment of splitEvents(bytes)) {
    for (const event of decodeAll(segment)) {
      if (event.event !== "content_block_delta") continue;
      if (seenDelta) at += (estimateTokens(event.data) / pace.tokensPerSecond) * 1000;
      seenDelta = true;
    }
    chunks.push({ atMs: at * scale, bytes: segment });
  }
  return chunks;
}

/** Splits SSE bytes after each blank line, keeping every byte (a cut tail is its own chunk). */
export function splitEvents(bytes: Uint8Array): Uint8Array[] {
  const LF = 0x0a, CR = 0x0d;
  const segments: Uint8Array[] = [];
  let start = 0;
  for (let i = 1; i < bytes.length; i++) {
    const b = bytes[i], p = bytes[i - 1];
    const endLf = b === LF &&
      (p === LF || (p === CR && bytes[i - 2] === LF && bytes[i - 3] === CR));
    const endCr = b === CR && p === CR && bytes[i + 1] !== LF;
    if (endLf || endCr) {
      segments.push(bytes.subarray(start, i + 1));
      start = i + 1;
    }
  }
  if (start < bytes.length) segments.push(bytes.subarray(start));
  return segments;
}

function estimateTokens(data: string): number {
  try {
    const delta = JSON.parse(data).delta ?? {};
    const text = delta.text ?? delta.partial_json ?? delta.thinking ?? "";
    return Math.max(1, Math.ceil(String(text).length / 4));
  } catch {
    return 1;
  }
}

/** Options for {@link createReplayFetch}. */
export interface ReplayOptions {
  pace: Pace;
  /** Waits `ms` or until `signal` aborts; injectable for tests. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

/** Creates the replay `fetch`: answers `POST …/v1/messages` from `set`. */
export function createReplayFetch(set: FixtureSet, options: ReplayOptions): typeof fetch {
  const sleep = options.sleep ?? abortableSleep;
  let counter = 0;
  return async (input, init) => {
    const request = new Request(input, init);
    const url = new URL(request.url);
    const requestId = () => `req_replay_${(++counter).toString(36).padStart(6, "0")}`;
    if (request.method === "GET" && url.pathname.startsWith("/v1/models")) {
      return modelsAnswer(set.models, url, requestId());
    }
    if (request.method === "POST" && url.pathname.endsWith("/v1/chat/completions")) {
      return chatCompletionsReplay(set, request, { ...options, sleep, requestId: requestId() });
    }
    if (request.method === "POST" && url.pathname.endsWith("/v1/messages/count_tokens")) {
      try {
        const input_tokens = estimateInputTokens(await request.json());
        return json(200, { input_tokens }, { "request-id": requestId() });
      } catch {
        return json(400, errorBody("invalid_request_error", "request body is not valid JSON"));
      }
    }
    if (request.method !== "POST" || !url.pathname.endsWith("/v1/messages")) {
      return json(
        404,
        errorBody(
          "not_found_error",
          "replay serves POST /v1/messages, POST /v1/messages/count_tokens and GET /v1/models",
        ),
      );
    }
    let body: Record<string, unknown>;
    try {
      body = await request.json();
    } catch {
      return json(400, errorBody("invalid_request_error", "request body is not valid JSON"));
    }
    const requested = request.headers.get("x-sluice-fixture");
    const fixture = pickFixture(set, body, requested);
    const id = requestId();
    if (!fixture) {
      const names = [...set.fixtures.keys()].sort().join(", ");
      return json(
        404,
        errorBody("not_found_error", `no fixture named "${requested}"; have: ${names}`),
        { "request-id": id },
      );
    }
    if (fixture.http) {
      return json(fixture.http.status, fixture.http.body, {
        ...fixture.http.headers,
        "request-id": fixture.http.headers["request-id"] ?? id,
      });
    }
    const chunks = schedule(fixture, options.pace);
    const headers = { "request-id": id, "x-sluice-fixture": fixture.name };
    if (body.stream === true) {
      return new Response(pacedStream(chunks, sleep, init?.signal ?? undefined), {
        headers: { ...headers, "content-type": "text/event-stream; charset=utf-8" },
      });
    }
    // Non-streaming waits as long as the whole stream would have taken: that is the point the
    // tutorial makes about time to first token.
    await sleep(chunks.at(-1)?.atMs ?? 0, init?.signal ?? undefined);
    return nonStreamingAnswer(fixture, headers);
  };
}

/** `GET /v1/models` (paged with `limit`, `after_id`, `before_id`) and `GET /v1/models/{id}`. */
function modelsAnswer(models: ModelInfo[], url: URL, requestId: string): Response {
  const headers = { "request-id": requestId };
  const raw = url.pathname.slice("/v1/models".length).replace(/^\//, "");
  if (raw) {
    let id = raw;
    try {
      id = decodeURIComponent(raw);
    } catch {
      // Malformed percent-encoding names no model: the same 404 as any unknown id.
    }
    const model = models.find((m) => m.id === id);
    return model
      ? json(200, model, headers)
      : json(404, errorBody("not_found_error", `model: ${id}`), headers);
  }
  const limitText = url.searchParams.get("limit") ?? "20";
  const limit = Number(limitText);
  if (!/^\d+$/.test(limitText) || limit < 1 || limit > 1000) {
    return json(
      400,
      errorBody("invalid_request_error", "limit: expected an integer from 1 to 1000"),
      headers,
    );
  }
  const after = url.searchParams.get("after_id");
  const before = url.searchParams.get("before_id");
  let start = 0;
  let end = models.length;
  if (after !== null) start = models.findIndex((m) => m.id === after) + 1;
  if (before !== null) end = Math.max(0, models.findIndex((m) => m.id === before));
  const page = before !== null && after === null
    ? models.slice(Math.max(start, end - limit), end)
    : models.slice(start, Math.min(end, start + limit));
  return json(200, {
    data: page,
    has_more: before !== null && after === null ? end - limit > start : start + limit < end,
    first_id: page[0]?.id ?? null,
    last_id: page.at(-1)?.id ?? null,
  }, headers);
}

/**
 * Replay's answer to `count_tokens`: about one token per four characters of the request's
 * system prompt, messages and tools as JSON (at least 1). Replay has no tokenizer; the figure
 * only has to be plausible, and it grows with the request as the real one does.
 */
export function estimateInputTokens(body: unknown): number {
  const request = (body && typeof body === "object" ? body : {}) as Record<string, unknown>;
  const text = JSON.stringify([request.system ?? "", request.messages ?? [], request.tools ?? []]);
  return Math.max(1, Math.ceil(text.length / 4));
}

function nonStreamingAnswer(fixture: Fixture, headers: Record<string, string>): Response {
  if (fixture.json) {
    return new Response(fixture.json, {
      headers: { ...headers, "content-type": "application/json" },
    });
  }
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((event) => accumulator.push(event));
  decoder.feed(fixture.sse ?? new Uint8Array());
  decoder.end();
  const result = accumulator.end();
  if (result.error) {
    const status = result.error.type === "overloaded_error" ? 529 : 500;
    return json(status, errorBody(result.error.type, result.error.message), headers);
  }
  if (!result.complete || !result.message) {
    return json(
      500,
      errorBody(errorTypeForStatus(500), `fixture "${fixture.name}" is a stream that ends early`),
      headers,
    );
  }
  return json(200, result.message, headers);
}

function pacedStream(
  chunks: ScheduledChunk[],
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>,
  signal?: AbortSignal,
): ReadableStream<Uint8Array> {
  let i = 0;
  let elapsed = 0;
  const cancelled = new AbortController();
  const onAbort = () => cancelled.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (i >= chunks.length) {
        signal?.removeEventListener("abort", onAbort);
        controller.close();
        return;
      }
      const chunk = chunks[i++];
      const wait = chunk.atMs - elapsed;
      try {
        if (wait > 0) await sleep(wait, cancelled.signal);
      } catch (error) {
        controller.error(error);
        return;
      }
      elapsed = Math.max(elapsed, chunk.atMs);
      controller.enqueue(chunk.bytes);
    },
    cancel() {
      signal?.removeEventListener("abort", onAbort);
      cancelled.abort();
    },
  }, { highWaterMark: 0 });
}

/** `setTimeout` as a promise that rejects when `signal` aborts. */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...headers, "content-type": "application/json" },
  });
}
