/**
 * Replay: recorded streams served as if they came from the API. This is sluice's embedded
 * default upstream (no `ANTHROPIC_API_KEY` needed) and the tests' network-free upstream.
 *
 * `createReplayFetch` returns a `fetch` that answers `POST /v1/messages` from a fixture set. It is
 * injected into the same SDK client live mode uses, so replay exercises the same code path. It
 * also answers `GET /v1/models` (the manifest's `models`), `POST /v1/messages/count_tokens`
 * (an estimate: see {@link estimateInputTokens}) and `GET /v1/replay/fixtures` (what there is and
 * how to ask for it: see {@link describeFixtures}).
 *
 * A fixture `NAME` is up to four files in the fixtures folder:
 * - `NAME.sse`: the exact bytes of a streamed response body;
 * - `NAME.timing.json`: optional, written by `deno task record`: when each received chunk arrived,
 *   `{"chunks":[{"at_ms":412.5,"bytes":183},…]}` (bytes in order, times from request start);
 * - `NAME.json`: optional, the body a `stream: false` request gets (otherwise it is accumulated
 *   from the `.sse`);
 * - `NAME.http.json`: instead of the above, an HTTP error `{"status","headers","body"}`.
 * `manifest.json` describes the fixtures and says which ordinary requests get which (see
 * {@link selectFixture}); every other fixture is served only when asked for by name.
 */
import { EventAccumulator } from "../stream/accumulator.ts";
import { errorBody } from "../errors.ts";
import { createBoundaryTracker, createSseDecoder, decodeAll } from "../stream/sse.ts";
import { chatCompletionsReplay } from "../openai/replay.ts";

/** One recorded answer. */
export interface Fixture {
  name: string;
  sse?: Uint8Array;
  timing?: TimingChunk[];
  json?: string;
  http?: { status: number; headers: Record<string, string>; body: unknown };
  /** What it carries (the manifest's `descriptions`). */
  description?: string;
}

/** One chunk of a recorded stream: its size and when it arrived. */
export interface TimingChunk {
  at_ms: number;
  bytes: number;
}

/**
 * A rule of `manifest.json`: the first rule whose conditions all hold picks the fixture of an
 * ordinary request (one that names none). There are no keyword rules: a word inside a prompt
 * never picks a failure; `pattern` is for prompts whose intent is a shape ("three words").
 */
export interface FixtureRule {
  fixture: string;
  description?: string;
  /** Matches only requests with (true) or without (false) `tools`. */
  tools?: boolean;
  /** Matches only requests that offer a tool with one of these names (the fixture calls it). */
  tool_names?: string[];
  /** Matches only requests with (true) or without (false) `thinking` enabled. */
  thinking?: boolean;
  /** Matches only requests whose `max_tokens` is at most this. */
  max_tokens_at_most?: number;
  /** A regular expression (case-insensitive) the last user message's text must match. */
  pattern?: string;
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
    for (const [name, description] of Object.entries(manifest.descriptions ?? {})) {
      const fixture = fixtures.get(name);
      if (fixture && typeof description === "string") fixture.description = description;
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  for (const rule of rules) {
    if (!fixtures.has(rule.fixture)) {
      throw new Error(`fixtures/manifest.json names "${rule.fixture}", which has no files`);
    }
    if ("keywords" in rule) {
      // Keyword rules sent ordinary prompts ("cut a string") to failure recordings; refuse them
      // loudly rather than ignore them.
      throw new Error(
        `fixtures/manifest.json: the rule for "${rule.fixture}" has "keywords", which replay no ` +
          `longer reads; use "pattern" (a regular expression) or ask for it by name`,
      );
    }
    if (rule.pattern !== undefined) compilePattern(rule.pattern);
  }
  if (!fixtures.has(defaultFixture)) {
    // Without a manifest, any fixture will do as the default: the first by name.
    const first = [...fixtures.keys()].sort()[0];
    if (!first) throw new Error(`no fixtures in ${base.pathname}`);
    defaultFixture = first;
  }
  return { fixtures, rules, defaultFixture, models };
}

const patterns = new Map<string, RegExp>();
function compilePattern(pattern: string): RegExp {
  let regex = patterns.get(pattern);
  if (!regex) patterns.set(pattern, regex = new RegExp(pattern, "iu"));
  return regex;
}

type Json = Record<string, unknown>;
const isObject = (value: unknown): value is Json =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** The last message of the request with `role: "user"`, if any. */
function lastUserMessage(body: Json): Json | undefined {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  for (let i = messages.length - 1; i >= 0; i--) {
    const message = messages[i];
    if (isObject(message) && message.role === "user") return message;
  }
  return undefined;
}

/** The text of the last user message of a Messages request body (its text blocks). */
export function lastUserText(body: Record<string, unknown>): string {
  const content = lastUserMessage(body)?.content;
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .map((block) => isObject(block) && typeof block.text === "string" ? block.text : "")
    .filter((text) => text !== "")
    .join(" ");
}

/**
 * The explicit marker that names a fixture inside a prompt: `[fixture:NAME]` in the last user
 * message. A marker, not a word: nobody writes it by accident.
 */
export const FIXTURE_MARKER: RegExp = /\[fixture:\s*([A-Za-z0-9_.-]+)\s*\]/;

/** How a request's answer was chosen. */
export type Selection =
  | { kind: "named"; via: "header" | "marker"; fixture: Fixture }
  | { kind: "rule"; rule: FixtureRule; fixture: Fixture }
  | { kind: "default"; fixture: Fixture }
  /** The last user turn holds tool results: a final text answer quoting them. */
  | { kind: "tool-result" }
  /** A name was asked for that no fixture has. */
  | { kind: "missing"; name: string };

/**
 * Picks the answer for a request, deterministically:
 * 1. a fixture named by the `x-sluice-fixture` header, else by a `[fixture:NAME]` marker in the
 *    last user message, is served as recorded (unless it is a tool call and the request is the
 *    answer to one: see 2);
 * 2. a request whose last user turn holds `tool_result` blocks gets a final text answer quoting
 *    them, so agent loops end;
 * 3. otherwise the first manifest rule whose conditions all hold;
 * 4. otherwise the manifest's default.
 */
export function selectFixture(
  set: FixtureSet,
  body: Record<string, unknown>,
  requested?: string | null,
): Selection {
  const text = lastUserText(body);
  const name = requested || FIXTURE_MARKER.exec(text)?.[1];
  const answersTools = hasToolResults(body);
  if (name) {
    const fixture = set.fixtures.get(name);
    if (!fixture) return { kind: "missing", name };
    // Calling the tool again in answer to its result would loop for ever.
    if (!(answersTools && callsClientTool(fixture))) {
      return { kind: "named", via: requested ? "header" : "marker", fixture };
    }
  }
  if (answersTools) return { kind: "tool-result" };
  const tools = Array.isArray(body.tools) ? body.tools : [];
  const toolNames = new Set(tools.map((tool) => isObject(tool) ? tool.name : undefined));
  const thinking = isObject(body.thinking) ? body.thinking : undefined;
  const hasThinking = Boolean(thinking && thinking.type && thinking.type !== "disabled");
  const maxTokens = typeof body.max_tokens === "number" ? body.max_tokens : Infinity;
  for (const rule of set.rules) {
    if (rule.tools !== undefined && rule.tools !== tools.length > 0) continue;
    if (rule.tool_names && !rule.tool_names.some((n) => toolNames.has(n))) continue;
    if (rule.thinking !== undefined && rule.thinking !== hasThinking) continue;
    if (rule.max_tokens_at_most !== undefined && maxTokens > rule.max_tokens_at_most) continue;
    if (rule.pattern !== undefined && !compilePattern(rule.pattern).test(text)) continue;
    return { kind: "rule", rule, fixture: set.fixtures.get(rule.fixture)! };
  }
  return { kind: "default", fixture: set.fixtures.get(set.defaultFixture)! };
}

/** The fixture a request gets (see {@link selectFixture}); undefined for an unknown name. */
export function pickFixture(
  set: FixtureSet,
  body: Record<string, unknown>,
  requested?: string | null,
): Fixture | undefined {
  const selection = selectFixture(set, body, requested);
  return "fixture" in selection ? selection.fixture : undefined;
}

/** Whether the last user turn carries `tool_result` blocks. */
function hasToolResults(body: Json): boolean {
  const content = lastUserMessage(body)?.content;
  return Array.isArray(content) &&
    content.some((block) => isObject(block) && block.type === "tool_result");
}

/** Whether a fixture's answer is a call of a client tool (`tool_use`, which the client runs). */
function callsClientTool(fixture: Fixture): boolean {
  if (!fixture.sse) return false;
  // A byte search first: most fixtures call no tool, and decoding all of them per request is waste.
  if (!latin1(fixture.sse).includes('"tool_use"')) return false;
  return decodeAll(fixture.sse).some((event) => {
    if (event.event !== "content_block_start") return false;
    try {
      return JSON.parse(event.data).content_block?.type === "tool_use";
    } catch {
      return false;
    }
  });
}

/**
 * The final answer to a turn of tool results: it names each tool and quotes what it returned
 * (shortened), so a client sees its result was read and an agent loop ends with text.
 */
export function toolResultAnswer(body: Record<string, unknown>): string {
  const names = new Map<string, string>();
  for (const message of Array.isArray(body.messages) ? body.messages : []) {
    if (!isObject(message) || !Array.isArray(message.content)) continue;
    for (const block of message.content) {
      if (isObject(block) && block.type === "tool_use" && typeof block.id === "string") {
        names.set(block.id, typeof block.name === "string" ? block.name : "tool");
      }
    }
  }
  const content = lastUserMessage(body)?.content;
  const results = (Array.isArray(content) ? content : []).filter((block): block is Json =>
    isObject(block) && block.type === "tool_result"
  );
  const lines = results.map((result) => {
    // A threaded request (the SDK's tool runner) sends only the new turn: the call's name may
    // be unknown here.
    const name = names.get(String(result.tool_use_id));
    const tool = name ? `The ${name} tool` : "The tool";
    const quoted = shorten(resultText(result.content), 300) || "(nothing)";
    return result.is_error === true
      ? `${tool} reported an error: ${quoted}`
      : `${tool} returned: ${quoted}`;
  });
  return `${lines.join("\n")}\n\nThat is all I needed. (sluice replay: this final answer ` +
    `quotes your tool results; set ANTHROPIC_API_KEY for real answers.)`;
}

function resultText(content: unknown): string {
  if (typeof content === "string") return content.trim();
  if (!Array.isArray(content)) return "";
  return content.map((block) => {
    if (!isObject(block)) return "";
    if (typeof block.text === "string") return block.text.trim();
    return `[${typeof block.type === "string" ? block.type : "content"}]`;
  }).filter((part) => part !== "").join(" ");
}

/** At most `max` characters (whole code points), with an ellipsis when shortened. */
function shorten(text: string, max: number): string {
  const chars = [...text];
  return chars.length <= max ? text : chars.slice(0, max).join("") + "…";
}

const encoder = new TextEncoder();
const sse = (event: string, data: unknown) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;

/**
 * A whole text answer as the API streams it: `message_start`, one text block in deltas of a
 * few words, `message_delta` with `end_turn`, `message_stop`. Output tokens are estimated as
 * characters / 4, like the pace.
 */
export function synthesizeStream(
  options: { id: string; model: string; text: string; inputTokens: number },
): Uint8Array {
  const parts = [
    sse("message_start", {
      type: "message_start",
      message: {
        id: options.id,
        type: "message",
        role: "assistant",
        model: options.model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: {
          input_tokens: options.inputTokens,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
          output_tokens: 1,
        },
      },
    }),
    sse("content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "text", text: "" },
    }),
    sse("ping", { type: "ping" }),
  ];
  for (const piece of options.text.match(/\s*(\S+\s*){1,3}/g) ?? []) {
    parts.push(sse("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "text_delta", text: piece },
    }));
  }
  parts.push(
    sse("content_block_stop", { type: "content_block_stop", index: 0 }),
    sse("message_delta", {
      type: "message_delta",
      delta: { stop_reason: "end_turn", stop_sequence: null },
      usage: { output_tokens: Math.max(1, Math.ceil(options.text.length / 4)) },
    }),
    sse("message_stop", { type: "message_stop" }),
  );
  return encoder.encode(parts.join(""));
}

/**
 * A complete recorded answer cut at `maxTokens` as the API cuts it: the content deltas up to
 * the budget (the recording's output tokens spread over its delta characters, the delta that
 * crosses the budget shortened), `content_block_stop`, then `message_delta` with
 * `stop_reason: "max_tokens"` and `output_tokens: maxTokens`, and `message_stop`. Undefined
 * when the answer fits, or is not a complete stream (errors and cuts are served as recorded).
 */
export function truncateAtMaxTokens(bytes: Uint8Array, maxTokens: number): Uint8Array | undefined {
  if (!Number.isFinite(maxTokens) || maxTokens < 1) return undefined;
  const segments = splitEvents(bytes).map((segment) => ({ segment, events: decodeAll(segment) }));
  const all = segments.flatMap((s) => s.events);
  if (!all.some((e) => e.event === "message_stop") || all.some((e) => e.event === "error")) {
    return undefined;
  }
  let outputTokens = 0;
  let totalChars = 0;
  for (const event of all) {
    const data = safeJson(event.data);
    if (event.event === "message_delta") {
      outputTokens = Number(data?.usage?.output_tokens) || outputTokens;
    }
    if (event.event === "content_block_delta") totalChars += deltaText(data?.delta).length;
  }
  if (outputTokens <= maxTokens || totalChars === 0) return undefined;
  let budget = Math.max(1, Math.floor((maxTokens / outputTokens) * totalChars));
  const out: Uint8Array[] = [];
  let open: { index: unknown; type: unknown } | undefined;
  for (const { segment, events } of segments) {
    const event = events[0];
    if (event?.event === "message_delta" || event?.event === "message_stop") break;
    const data = safeJson(event?.data ?? "");
    if (event?.event === "content_block_start") {
      open = { index: data?.index, type: data?.content_block?.type };
    }
    if (event?.event === "content_block_stop") open = undefined;
    if (event?.event !== "content_block_delta") {
      out.push(segment);
      continue;
    }
    const text = deltaText(data?.delta);
    if (text.length <= budget) {
      out.push(segment);
      budget -= text.length;
      continue;
    }
    // The delta that crosses the budget: keep its first `budget` characters, never half of a
    // surrogate pair.
    let end = budget;
    if (end > 0 && /[\uD800-\uDBFF]/.test(text[end - 1])) end--;
    const kept = text.slice(0, end);
    if (kept !== "") {
      const key = ["text", "thinking", "partial_json"].find((k) => k in data.delta)!;
      out.push(encoder.encode(sse("content_block_delta", {
        ...data,
        delta: { ...data.delta, [key]: kept },
      })));
    }
    break;
  }
  const tail = [];
  // The API ends a text or thinking block cut by max_tokens with content_block_stop, but not a
  // tool input (the `tool-max-tokens-no-stop` recording).
  if (open && !TOOL_INPUT_BLOCKS.has(String(open.type))) {
    tail.push(sse("content_block_stop", { type: "content_block_stop", index: open.index }));
  }
  tail.push(
    sse("message_delta", {
      type: "message_delta",
      delta: { stop_reason: "max_tokens", stop_sequence: null },
      usage: { output_tokens: maxTokens },
    }),
    sse("message_stop", { type: "message_stop" }),
  );
  out.push(encoder.encode(tail.join("")));
  return concat(out);
}

const TOOL_INPUT_BLOCKS = new Set(["tool_use", "server_tool_use", "mcp_tool_use"]);

// deno-lint-ignore no-explicit-any
function safeJson(data: string): any {
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}

function deltaText(delta: unknown): string {
  if (!isObject(delta)) return "";
  const text = delta.text ?? delta.thinking ?? delta.partial_json;
  return typeof text === "string" ? text : "";
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Bytes as a string of one character per byte: byte offsets stay string offsets. */
function latin1(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return text;
}

/**
 * `bytes` with the first `"model"` value (after `after`, when given) replaced by `model`,
 * every other byte unchanged; and where the change is and how many bytes it adds. Undefined
 * when there is no such field or it already says `model`.
 */
export function rewriteModel(
  bytes: Uint8Array,
  model: string,
  after = "",
): { bytes: Uint8Array; at: number; delta: number } | undefined {
  const text = latin1(bytes);
  const from = after ? text.indexOf(after) : 0;
  if (from < 0) return undefined;
  const pattern = /"model"\s*:\s*("(?:[^"\\]|\\.)*")/g;
  pattern.lastIndex = from;
  const match = pattern.exec(text);
  if (!match) return undefined;
  const replacement = encoder.encode(JSON.stringify(model));
  const start = match.index + match[0].length - match[1].length;
  const end = match.index + match[0].length;
  const old = bytes.subarray(start, end);
  if (old.length === replacement.length && old.every((b, i) => b === replacement[i])) {
    return undefined;
  }
  return {
    bytes: concat([bytes.subarray(0, start), replacement, bytes.subarray(end)]),
    at: start,
    delta: replacement.length - old.length,
  };
}

/** A stream's fixture with its `message_start` naming `model`; recorded timing kept in step. */
function withModel(fixture: Fixture, model: string): Fixture {
  if (!fixture.sse) return fixture;
  const changed = rewriteModel(fixture.sse, model, '"message_start"');
  if (!changed) return fixture;
  let timing = fixture.timing;
  if (timing) {
    // The recorded chunk holding the model grows or shrinks by the difference.
    let offset = 0;
    timing = timing.map((chunk) => {
      const holds = changed.at >= offset && changed.at < offset + chunk.bytes;
      offset += chunk.bytes;
      return holds ? { ...chunk, bytes: chunk.bytes + changed.delta } : chunk;
    });
  }
  return { ...fixture, sse: changed.bytes, timing };
}

/** Whether SSE bytes end inside an event: a recording of a connection cut mid-event. */
export function endsInsideEvent(bytes: Uint8Array): boolean {
  const tracker = createBoundaryTracker();
  tracker.see(bytes);
  return !tracker.atBoundary();
}

/** What `GET /v1/replay/fixtures` and `deno task replay --list` show of one fixture. */
export interface FixtureListing {
  name: string;
  description: string | null;
  /** `stream` (`.sse`) or `http` (an HTTP error). */
  kind: "stream" | "http";
  /** When an ordinary request gets it (no name given); null: only when asked for by name. */
  served_when: string | null;
  /** How to ask for it by name. */
  ask: { header: string; marker: string };
}

/** Every fixture of `set`, by name, with how it is selected and how to ask for it. */
export function describeFixtures(set: FixtureSet): FixtureListing[] {
  return [...set.fixtures.values()].sort((a, b) => a.name.localeCompare(b.name)).map((f) => {
    const rules = set.rules.filter((rule) => rule.fixture === f.name);
    const when = rules.map((rule) => rule.description ?? JSON.stringify(rule));
    if (f.name === set.defaultFixture) when.push("no rule matches (the default)");
    return {
      name: f.name,
      description: f.description ?? null,
      kind: f.http ? "http" : "stream",
      served_when: when.length ? when.join("; or ") : null,
      ask: { header: `x-sluice-fixture: ${f.name}`, marker: `[fixture:${f.name}]` },
    };
  });
}

/** The selection order, as `GET /v1/replay/fixtures` states it. */
export const SELECTION_RULES: string[] = [
  "x-sluice-fixture: NAME (header) or [fixture:NAME] in the last user message serves that fixture as recorded",
  "a last user turn of tool_result blocks gets a final text answer quoting them (also when the named fixture is a tool call)",
  "otherwise the first manifest rule that holds (served_when), else the default",
  "an answer not asked for by name that is longer than max_tokens is cut there (stop_reason max_tokens)",
  "the answer names the requested model",
];
/** How fast replay serves fixtures that have no recorded timing. */
export interface Pace {
  /** Delay before the first content delta (and the events between it and `message_start`), in ms. */
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
  // As the API does: `message_start` (and anything before it) at once, in a chunk of its own;
  // the wait for the first token comes after it.
  let started = false;
  for (const segment of splitEvents(bytes)) {
    const events = decodeAll(segment);
    if (!started) {
      started = events.some((event) => event.event === "message_start");
      chunks.push({ atMs: 0, bytes: segment });
      continue;
    }
    for (const event of events) {
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
      return chatCompletionsReplay(request, {
        messages: createReplayFetch(set, options),
        requestId: requestId(),
      });
    }
    if (request.method === "GET" && url.pathname === "/v1/replay/fixtures") {
      return json(200, { selection: SELECTION_RULES, fixtures: describeFixtures(set) }, {
        "request-id": requestId(),
      });
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
          "replay serves POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/models " +
            "and GET /v1/replay/fixtures",
        ),
      );
    }
    let body: Record<string, unknown>;
    try {
      body = await request.json();
    } catch {
      return json(400, errorBody("invalid_request_error", "request body is not valid JSON"));
    }
    if (!isObject(body)) {
      return json(
        400,
        errorBody("invalid_request_error", "the request body must be a JSON object"),
      );
    }
    const selection = selectFixture(set, body, request.headers.get("x-sluice-fixture"));
    const id = requestId();
    if (selection.kind === "missing") {
      const names = [...set.fixtures.keys()].sort().join(", ");
      return json(
        404,
        errorBody("not_found_error", `no fixture named "${selection.name}"; have: ${names}`),
        { "request-id": id },
      );
    }
    const model = typeof body.model === "string" && body.model !== "" ? body.model : undefined;
    let served: Fixture;
    if (selection.kind === "tool-result") {
      served = {
        name: "tool-result",
        sse: synthesizeStream({
          id: `msg_replay_${id.slice("req_replay_".length)}`,
          model: model ?? "claude-replay",
          text: toolResultAnswer(body),
          inputTokens: estimateInputTokens(body),
        }),
      };
    } else {
      served = selection.fixture;
      if (served.http) {
        return json(served.http.status, served.http.body, {
          ...served.http.headers,
          "request-id": served.http.headers["request-id"] ?? id,
        });
      }
    }
    // A fixture asked for by name is served as recorded; any other answer keeps to the
    // request's max_tokens as the API would.
    if (selection.kind !== "named" && served.sse && typeof body.max_tokens === "number") {
      const cut = truncateAtMaxTokens(served.sse, body.max_tokens);
      if (cut) served = { name: served.name, sse: cut };
    }
    // The answer names the model that was asked for (stats by model show what callers use).
    if (model) served = withModel(served, model);
    const chunks = schedule(served, options.pace);
    const headers = { "request-id": id, "x-sluice-fixture": served.name };
    if (body.stream === true) {
      const cut = endsInsideEvent(served.sse ?? new Uint8Array());
      return new Response(pacedStream(chunks, sleep, init?.signal ?? undefined, cut), {
        headers: { ...headers, "content-type": "text/event-stream; charset=utf-8" },
      });
    }
    // Non-streaming waits as long as the whole stream would have taken: that is the point the
    // tutorial makes about time to first token.
    await sleep(chunks.at(-1)?.atMs ?? 0, init?.signal ?? undefined);
    return nonStreamingAnswer(served, headers, model);
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

/** The HTTP status the API gives a request that fails with an error of `type`. */
function statusForErrorType(type: string): number {
  const statuses: Record<string, number> = {
    invalid_request_error: 400,
    authentication_error: 401,
    permission_error: 403,
    not_found_error: 404,
    request_too_large: 413,
    rate_limit_error: 429,
    api_error: 500,
    timeout_error: 504,
    overloaded_error: 529,
  };
  return statuses[type] ?? 500;
}

function nonStreamingAnswer(
  fixture: Fixture,
  headers: Record<string, string>,
  model: string | undefined,
): Response {
  if (fixture.json) {
    const bytes = encoder.encode(fixture.json);
    const body = (model ? rewriteModel(bytes, model)?.bytes : undefined) ?? bytes;
    return new Response(body as BodyInit, {
      headers: { ...headers, "content-type": "application/json" },
    });
  }
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((event) => accumulator.push(event));
  decoder.feed(fixture.sse ?? new Uint8Array());
  decoder.end();
  const result = accumulator.end();
  if (result.error) {
    // The recorded stream's error event, as the API answers it without streaming.
    return json(
      statusForErrorType(result.error.type),
      errorBody(result.error.type, result.error.message),
      headers,
    );
  }
  if (!result.complete || !result.message) {
    // A recording that breaks off: what sluice answers when an upstream body breaks off (see
    // unreadBody in messages_call.ts), never a 500.
    return json(
      502,
      errorBody("api_error", "the upstream connection dropped before the whole answer arrived"),
      headers,
    );
  }
  return json(200, result.message, headers);
}

function pacedStream(
  chunks: ScheduledChunk[],
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>,
  signal?: AbortSignal,
  cut = false,
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
        // A recording that ends inside an event is a cut connection: the body errors, as a
        // dropped socket's does, so sluice's own handling of a dropped upstream runs.
        if (cut) controller.error(new ReplayCutError());
        else controller.close();
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

/** How a replayed cut connection ends its body (a dropped socket's read fails similarly). */
export class ReplayCutError extends TypeError {
  constructor() {
    super("replay: the recorded connection was cut here");
    this.name = "ReplayCutError";
  }
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
