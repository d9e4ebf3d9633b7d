/**
 * Fuzzing: thousands of malformed requests (bodies, headers, paths, methods) and malformed
 * upstream answers (statuses, content types, broken and cut SSE, invalid UTF-8, stalls) through
 * the app. Every answer must be well-formed, sluice must never answer 500 of its own, the
 * observers must never throw, and the app must still serve a clean request afterwards.
 *
 * Reproducible: the PRNG is seeded (`SLUICE_FUZZ_SEED`, printed), and every failure names its
 * case number. `SLUICE_FUZZ_CASES` scales the number of cases.
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { createLogger } from "../lib/log.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import {
  instantReplayUpstream,
  projectFixtures,
  readFixture,
  seededRandom,
  splitRandom,
  testConfig,
} from "./helpers.ts";

const SEED = Number(Deno.env.get("SLUICE_FUZZ_SEED") ?? 20261126);
const CASES = Number(Deno.env.get("SLUICE_FUZZ_CASES") ?? 2000);

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

type Random = () => number;
const int = (random: Random, n: number) => Math.floor(random() * n);
const pick = <T>(random: Random, items: readonly T[]): T => items[int(random, items.length)];

/** A logger that keeps errors (observer failures, unhandled errors) for the assertions. */
function errorLog() {
  const errors: string[] = [];
  const logger = createLogger({
    level: "error",
    write: (_level, line) => errors.push(line),
  });
  return { logger, errors };
}

// --- requests ----------------------------------------------------------------------------------

const VALID = {
  model: "claude-test",
  max_tokens: 32,
  messages: [{ role: "user", content: "hello there" }],
};

const WEIRD_VALUES: unknown[] = [
  null,
  true,
  0,
  -1,
  1e308,
  "",
  "x".repeat(5000),
  "\u0000\ud800",
  [],
  {},
  [[[[[]]]]],
  { role: "user" },
  "🦀".repeat(50),
];

/** A request body: a valid one bent out of shape in one or more random ways. */
function fuzzBody(random: Random): BodyInit | null {
  const kind = int(random, 10);
  if (kind === 0) return null;
  if (kind === 1) {
    return crypto.getRandomValues(new Uint8Array(int(random, 300))) as BodyInit;
  }
  if (kind === 2) return JSON.stringify(pick(random, WEIRD_VALUES));
  const value: Record<string, unknown> = structuredClone(VALID);
  const fields = ["model", "max_tokens", "messages", "stream", "system", "message", "tools"];
  for (let i = 0, n = 1 + int(random, 3); i < n; i++) {
    const field = pick(random, fields);
    if (random() < 0.3) delete value[field];
    else value[field] = pick(random, WEIRD_VALUES);
  }
  if (random() < 0.5) value.stream = random() < 0.5;
  if (random() < 0.2) {
    value.messages = [{
      role: pick(random, ["user", "assistant", "x"]),
      content: pick(random, WEIRD_VALUES),
    }];
  }
  let text = JSON.stringify(value);
  if (kind === 3) text = text.slice(0, int(random, text.length)); // truncated JSON
  if (kind === 4) {
    const at = int(random, text.length);
    text = text.slice(0, at) + pick(random, ["\u0000", "}", "{", '"', "\\", ",", "\ud800"]) +
      text.slice(at);
  }
  return text;
}

const CONTENT_TYPES = [
  "application/json",
  "application/json; charset=utf-8",
  "APPLICATION/JSON",
  "application/vnd.api+json",
  "text/plain",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=x",
  "",
  "json",
  "application/jsonp",
];

const PATHS = [
  "/v1/messages",
  "/v1/messages",
  "/v1/messages",
  "/chat",
  "/chat",
  "/conversations",
  "/conversations/%00",
  "/conversations/../../etc/passwd",
  "/health",
  "/v1/messages/",
  "/v1//messages",
  "/%ff%fe",
  "/stats",
  "/metrics",
  "/" + "a".repeat(3000),
];

const METHODS = ["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"];

/** A random visible-ASCII header value (what `Headers` accepts). */
function headerValue(random: Random, max = 60): string {
  let s = "";
  for (let i = 0, n = int(random, max); i < n; i++) s += String.fromCharCode(32 + int(random, 95));
  return s.trim();
}

function fuzzRequest(random: Random): Request {
  const method = random() < 0.7 ? "POST" : pick(random, METHODS);
  const route = random() < 0.5 ? "/v1/messages" : random() < 0.4 ? "/chat" : pick(random, PATHS);
  const path = route + (random() < 0.1 ? `?stats=${headerValue(random, 8)}` : "");
  const headers = new Headers();
  const type = pick(random, CONTENT_TYPES);
  if (type) headers.set("content-type", type);
  if (random() < 0.3) headers.set("x-api-key", headerValue(random));
  if (random() < 0.2) {
    headers.set(
      "authorization",
      pick(random, ["Bearer ", "Basic x", "Bearer"]) + headerValue(random),
    );
  }
  if (random() < 0.3) headers.set("anthropic-version", headerValue(random, 20));
  if (random() < 0.2) headers.set("anthropic-beta", headerValue(random, 40));
  if (random() < 0.3) {
    headers.set(
      "accept",
      pick(random, ["text/event-stream", "*/*", "application/json", headerValue(random)]),
    );
  }
  if (random() < 0.2) {
    headers.set(
      "x-sluice-fixture",
      pick(random, ["default", "essay", "nope", headerValue(random, 12)]),
    );
  }
  if (random() < 0.1) {
    headers.set("origin", "https://" + headerValue(random, 10).replace(/\W/g, "") + ".example");
  }
  const body = method === "GET" || method === "HEAD" ? null : fuzzBody(random);
  return new Request(`http://sluice.test${path}`, { method, headers, body });
}

/** Reads a response whole and checks it is well-formed; returns its status. */
async function checkResponse(response: Response, where: string): Promise<void> {
  assert.notEqual(response.status, 500, `${where}: sluice answered 500`);
  assert.ok(response.status >= 200 && response.status < 600, `${where}: status ${response.status}`);
  const type = response.headers.get("content-type") ?? "";
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (response.status >= 400) {
    if (response.status === 405 || bytes.length === 0) return;
    assert.match(type, /^application\/json/, `${where}: error content-type ${type}`);
    const body = JSON.parse(dec(bytes));
    assert.equal(body.type, "error", `${where}: error shape`);
    assert.equal(typeof body.error?.type, "string", `${where}: error.type`);
    assert.equal(typeof body.error?.message, "string", `${where}: error.message`);
    assert.doesNotMatch(dec(bytes), /file:\/\/|\.ts:\d+/, `${where}: a stack trace`);
  } else if (type.startsWith("application/json") && bytes.length > 0) {
    JSON.parse(dec(bytes));
  } else if (type.startsWith("text/event-stream")) {
    for (const event of decodeAll(bytes)) {
      if (event.event === "error") JSON.parse(event.data);
    }
  }
}

Deno.test(`thousands of malformed requests get well-formed 4xx answers, never a 500 (seed ${SEED})`, async () => {
  const random = seededRandom(SEED);
  const kv = await Deno.openKv(":memory:");
  const { logger, errors } = errorLog();
  try {
    const upstream = await instantReplayUpstream();
    const apps = [
      createApp({ config: testConfig(), upstream, logger, kv }),
      createApp({
        config: testConfig({
          SLUICE_API_KEYS: "fuzz-key",
          SLUICE_MAX_BODY_BYTES: "4096",
          SLUICE_CORS_ORIGINS: "https://a.example",
        }),
        upstream,
        logger,
        kv,
      }),
    ];
    const statuses = new Map<number, number>();
    for (let i = 0; i < CASES; i++) {
      const app = apps[i % 2];
      const request = fuzzRequest(random);
      if (i % 2 === 1 && random() < 0.5) request.headers.set("x-api-key", "fuzz-key");
      const where = `seed ${SEED} case ${i}: ${request.method} ${request.url.slice(0, 80)}`;
      const response = await app.request(request);
      statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      await checkResponse(response, where);
    }
    assert.deepEqual(errors, [], "no unhandled error and no observer failure was logged");
    // Many shapes were seen, so the fuzzing reached past the first check.
    assert.ok(statuses.size >= 5, `statuses seen: ${[...statuses.keys()]}`);
    assert.ok((statuses.get(200) ?? 0) > 0, "some requests were valid and answered");
    console.log(
      `request fuzz, seed ${SEED}: ${CASES} cases, statuses ${
        JSON.stringify(Object.fromEntries(statuses))
      }`,
    );

    // Replay echoes the requested model: asking with the recording's own gives its bytes.
    const recorded = await readFixture("three-words.sse");
    const model = JSON.parse(decodeAll(recorded)[0].data).message.model;
    const clean = await apps[0].request(
      new Request("http://sluice.test/v1/messages", {
        method: "POST",
        headers: { "content-type": "application/json", "x-sluice-fixture": "three-words" },
        body: JSON.stringify({ ...VALID, model, stream: true }),
      }),
    );
    assert.equal(clean.status, 200);
    assert.deepEqual(new Uint8Array(await clean.arrayBuffer()), recorded);
  } finally {
    kv.close();
  }
});

// --- upstream answers --------------------------------------------------------------------------

/** A fixture bent out of shape: bytes flipped, lines dropped or added, endings changed, cut. */
function mangle(random: Random, bytes: Uint8Array): Uint8Array {
  let text = dec(bytes);
  const ops = 1 + int(random, 3);
  for (let i = 0; i < ops; i++) {
    switch (int(random, 9)) {
      case 0: // cut anywhere
        text = text.slice(0, int(random, text.length));
        break;
      case 1: // drop a random line
      {
        const lines = text.split("\n");
        lines.splice(int(random, lines.length), 1);
        text = lines.join("\n");
        break;
      }
      case 2: // garbage lines
      {
        const at = text.indexOf("\n", int(random, text.length));
        const junk = pick(random, [
          "data: {not json}\n",
          'event: message_delta\ndata: {"type":"message_delta"}\n\n',
          'event: content_block_delta\ndata: {"type":"content_block_delta","index":99,"delta":{}}\n\n',
          'event: message_start\ndata: {"type":"message_start","message":null}\n\n',
          'event: error\ndata: {"type":"error"}\n\n',
          "event: error\ndata: [1,2]\n\n",
          ": comment\n",
          "retry: abc\n",
          "id: \u0000\n",
          "data: " + "x".repeat(20_000) + "\n\n",
          "event: \ndata:\n\n",
        ]);
        text = at < 0 ? text + junk : text.slice(0, at + 1) + junk + text.slice(at + 1);
        break;
      }
      case 3:
        text = text.replaceAll("\n", "\r\n");
        break;
      case 4:
        text = text.replaceAll("\n", "\r");
        break;
      case 5:
        text = text.replaceAll("\n\n", "\n");
        break;
      case 6: // swap two events
      {
        const events = text.split("\n\n");
        const a = int(random, events.length), b = int(random, events.length);
        [events[a], events[b]] = [events[b], events[a]];
        text = events.join("\n\n");
        break;
      }
      case 7: // a JSON value changed type
        text = text.replace(
          /"(index|text|input_tokens|output_tokens|type)":("[^"]*"|\d+)/,
          (_m, k) => `"${k}":${pick(random, ["null", "[]", "{}", "-1", '""', "true"])}`,
        );
        break;
      default:
        break;
    }
  }
  const out = enc(text);
  // Flip a few raw bytes too (invalid UTF-8 included).
  for (let i = 0, n = int(random, 3); i < n && out.length > 0; i++) {
    out[int(random, out.length)] = int(random, 256);
  }
  return out;
}

type Ending = "close" | "drop" | "stall";

function upstreamBody(chunks: Uint8Array[], ending: Ending): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]);
      else if (ending === "close") controller.close();
      else if (ending === "drop") controller.error(new TypeError("connection reset"));
      else return new Promise<void>(() => {});
      return undefined;
    },
  });
}

Deno.test(`thousands of malformed upstream answers reach the client well-formed, never as a 500 (seed ${SEED})`, async () => {
  const random = seededRandom(SEED + 1);
  const set = await projectFixtures();
  const streams = [...set.fixtures.values()].filter((f) => f.sse).map((f) => f.sse!);
  const jsons = [...set.fixtures.values()].filter((f) => f.json).map((f) => enc(f.json!));
  const { logger, errors } = errorLog();
  const stats = memorySink();
  let plan: () => Response = () => new Response(null);
  const upstream = createUpstream({
    mode: "live",
    apiKey: "sk-ant-fuzz",
    baseURL: "http://upstream.test",
    maxRetries: 0,
    streamPolicy: { idleTimeoutMs: 5, keepAliveMs: 0 },
    fetch: () => Promise.resolve(plan()),
  });
  const app = createApp({ config: testConfig(), upstream, logger, stats });
  const cases = Math.max(1, Math.floor(CASES / 2));
  for (let i = 0; i < cases; i++) {
    const where = `seed ${SEED + 1} case ${i}`;
    const stream = random() < 0.7;
    const status = pick(random, [200, 200, 200, 200, 200, 400, 401, 404, 413, 429, 502, 503, 529]);
    const contentType = pick(random, [
      "text/event-stream",
      "text/event-stream",
      "application/json",
      "text/html",
      "",
    ]);
    const source = stream || random() < 0.2 ? pick(random, streams) : pick(random, jsons);
    const bytes = random() < 0.85 ? mangle(random, source) : source;
    const ending: Ending = pick(random, ["close", "close", "close", "drop", "stall"]);
    const chunks = splitRandom(bytes, random, 1 + int(random, 200));
    plan = () =>
      new Response(upstreamBody(chunks, ending), {
        status,
        headers: contentType ? { "content-type": contentType } : {},
      });
    const response = await app.request(
      new Request("http://sluice.test/v1/messages", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...VALID, stream }),
      }),
    );
    assert.notEqual(response.status, 500, `${where}: sluice answered 500`);
    const clientType = response.headers.get("content-type") ?? "";
    const sseForwarded = status === 200 && contentType === "text/event-stream";
    if (sseForwarded) {
      assert.equal(response.status, 200, where);
      const got = new Uint8Array(await response.arrayBuffer());
      // Whatever the upstream sent reaches the client unchanged, in order ...
      assert.deepEqual(got.subarray(0, bytes.length), bytes, `${where}: bytes forwarded`);
      const tail = got.subarray(bytes.length);
      const ended = decodeAll(bytes).some((e) => e.event === "message_stop" || e.event === "error");
      if (ending === "close" && ended) {
        assert.equal(tail.length, 0, `${where}: nothing added to a clean end`);
      } else {
        // A clean close without message_stop is no end either: an error event says so.
        // ... and a cut stream ends with a well-formed error event, never silently.
        const last = decodeAll(tail).at(-1);
        assert.equal(last?.event, "error", `${where}: error event after a cut`);
        assert.equal(JSON.parse(last!.data).error.type, "api_error", where);
      }
    } else {
      await checkResponse(response, where);
      if (status !== 200) assert.equal(response.status, status, `${where}: upstream status passed`);
      else assert.match(clientType, /^application\/json/, `${where}: JSON answer`);
    }
  }
  for (let i = 0; i < 100 && stats.records.length < cases; i++) {
    await new Promise((r) => setTimeout(r, 1));
  }
  assert.equal(stats.records.length, cases, "every request was recorded");
  for (const summary of stats.records) assert.equal(typeof summary.outcome, "string");
  assert.deepEqual(errors, [], "no observer failure and no unhandled error was logged");
  const outcomes: Record<string, number> = {};
  for (const s of stats.records) outcomes[s.outcome] = (outcomes[s.outcome] ?? 0) + 1;
  console.log(
    `upstream fuzz, seed ${SEED + 1}: ${cases} cases, outcomes ${JSON.stringify(outcomes)}`,
  );
});
