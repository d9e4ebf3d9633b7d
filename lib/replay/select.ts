/** Which fixture answers a request: a deterministic, documented order (see SELECTION_RULES). */
import type { Fixture, FixtureRule, FixtureSet } from "./fixtures.ts";
import { decodeAll } from "../stream/sse.ts";
import { latin1 } from "./rewrite.ts";
import type { Json } from "./body.ts";
import { isObject, lastUserMessage, lastUserText } from "./body.ts";

const patterns = new Map<string, RegExp>();
/** A manifest rule's pattern as a case-insensitive Unicode RegExp, compiled once. */
export function compilePattern(pattern: string): RegExp {
  let regex = patterns.get(pattern);
  if (!regex) patterns.set(pattern, regex = new RegExp(pattern, "iu"));
  return regex;
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

/** The selection order, as `GET /v1/replay/fixtures` states it. */
export const SELECTION_RULES: string[] = [
  "x-sluice-fixture: NAME (header) or [fixture:NAME] in the last user message serves that fixture as recorded",
  "a last user turn of tool_result blocks gets a final text answer quoting them (also when the named fixture is a tool call)",
  "otherwise the first manifest rule that holds (served_when), else the default",
  "an answer not asked for by name that is longer than max_tokens is cut there (stop_reason max_tokens)",
  "the answer names the requested model",
];
