/**
 * The fixture set replay serves: loading a fixtures folder and describing what it holds.
 *
 * A fixture `NAME` is up to four files in the fixtures folder:
 * - `NAME.sse`: the exact bytes of a streamed response body;
 * - `NAME.timing.json`: optional, written by `deno task record`: when each received chunk arrived,
 *   `{"chunks":[{"at_ms":412.5,"bytes":183},…]}` (bytes in order, times from request start);
 * - `NAME.json`: optional, the body a `stream: false` request gets (otherwise it is accumulated
 *   from the `.sse`);
 * - `NAME.http.json`: instead of the above, an HTTP error `{"status","headers","body"}`.
 * `manifest.json` describes the fixtures and says which ordinary requests get which (see
 * lib/replay/select.ts); every other fixture is served only when asked for by name.
 */
import { compilePattern } from "./select.ts";

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
