/**
 * `deno task replay --list [--json]`: the fixtures replay mode serves (the folder of
 * `SLUICE_FIXTURES_DIR`, else the bundled one), what each carries, which ordinary requests get it
 * and how to ask for it by name.
 *
 * `deno task replay FILE|NAME [--json] [--speed N]`: replays a recorded `.sse` file, or the fixture
 * NAME of that folder (when there is no file FILE), through the decoder and the accumulator, like
 * a client would see it.
 *
 * Without `--json` it prints the text as it arrives, then time to first token, total time and
 * tokens, as the tutorial does; paced like replay mode (the file's `.timing.json` when there is
 * one, else the default pace), at `--speed` (default 1; 0 = no waiting).
 * With `--json` it prints one JSON object: message, error, incomplete, events, metrics (and
 * does not wait unless `--speed` is given). An HTTP error fixture (`NAME.http.json`) has no stream:
 * it prints its status, error and retry-after instead (lib/cli/http_answer.ts).
 *
 * Exits 0 once the recording is shown, whatever it holds (an error event, a cut stream, an HTTP
 * error: showing those is what such fixtures are for), 1 when FILE or NAME cannot be read or holds
 * no stream (a fixture's `NAME.json`: the message names its `.sse`), 2 for bad usage or a bad
 * configuration value (ConfigError's message, as `deno task record` prints it); `--help` prints
 * the usage.
 */
import type { PriceTable } from "../stats/prices.ts";
import { shippedPrices } from "../stats/prices.ts";
import { costOfMessage } from "../stats/cost.ts";
import { formatUsd } from "../chat/encoding.ts";
import { parseArgs } from "node:util";
import { EventAccumulator, type StreamResult } from "../stream/accumulator.ts";
import { systemClock } from "../clock.ts";
import {
  describeFixtures,
  type Fixture,
  type FixtureListing,
  loadFixtures,
} from "../replay/fixtures.ts";
import { abortableSleep, schedule } from "../replay/pace.ts";
import { SELECTION_RULES } from "../replay/select.ts";
import { createSseDecoder } from "../stream/sse.ts";
import { NoFixtureError, openFixture } from "./replay_source.ts";
import { httpErrorLines, httpErrorSummary } from "./http_answer.ts";
import { argsOrExitCode, configOrExitCode } from "./usage.ts";

/** Options for {@link replayFixture}. */
export interface ReplayOptions {
  speed: number;
  ttftMs: number;
  tokensPerSecond: number;
  onText?: (delta: string) => void;
}

/** Replays one fixture's stream, at its pace, and returns what the accumulator made of it. */
export async function replayFixture(
  fixture: Fixture,
  options: ReplayOptions,
): Promise<StreamResult> {
  const chunks = schedule(fixture, {
    ttftMs: options.ttftMs,
    tokensPerSecond: options.tokensPerSecond,
    speed: options.speed,
  });
  const startedAt = systemClock.now();
  const accumulator = new EventAccumulator({
    clock: systemClock,
    startedAt,
    observer: { onText: (delta) => options.onText?.(delta) },
  });
  const decoder = createSseDecoder((event) => accumulator.push(event));
  for (const chunk of chunks) {
    const wait = startedAt + chunk.atMs - systemClock.now();
    if (wait > 0) await abortableSleep(wait);
    decoder.feed(chunk.bytes);
  }
  decoder.end();
  return accumulator.end();
}

/** The one JSON object `--json` prints. */
export function resultJson(
  result: StreamResult,
  prices: PriceTable = shippedPrices(),
): Record<string, unknown> {
  const cost = costOfMessage(prices, result.message);
  return {
    kind: "stream",
    message: result.message,
    cost_usd: cost.priced ? cost.usd : null,
    error: result.error,
    incomplete: result.incomplete,
    complete: result.complete,
    events: result.events,
    deltas: result.deltas,
    unknown: result.unknown,
    metrics: result.metrics,
  };
}

/** The tutorial-style summary printed after the text. */
export function summaryLines(
  result: StreamResult,
  prices: PriceTable = shippedPrices(),
): string[] {
  const seconds = (
    ms: number | null,
  ) => (ms === null ? "n/a" : `${(ms / 1000).toFixed(3)} seconds`);
  const usage = (result.message?.usage ?? {}) as unknown as Record<string, unknown>;
  const lines = [
    `Time to first token: ${seconds(result.metrics.ttftMs)}`,
    `Total time: ${seconds(result.metrics.totalMs)}`,
    `Input tokens: ${usage.input_tokens ?? "n/a"}`,
    `Output tokens: ${usage.output_tokens ?? "n/a"}`,
    `Cost: ${costLine(prices, result.message)}`,
  ];
  if (result.error) lines.push(`Error: ${result.error.type}: ${result.error.message}`);
  else if (result.incomplete) lines.push("Incomplete: the stream ended without message_stop");
  return lines;
}

function costLine(prices: PriceTable, message: StreamResult["message"]): string {
  const cost = costOfMessage(prices, message);
  if (cost.priced) return `${formatUsd(cost.usd)} (${cost.priceId} prices)`;
  return `unpriced (no price for ${message?.model ?? "an unknown model"})`;
}

/** The `--list` table: one fixture per paragraph, how to ask for it, when it is served anyway. */
export function listingLines(listing: FixtureListing[]): string[] {
  const lines = [
    "How replay picks an answer:",
    ...SELECTION_RULES.map((rule) => `  - ${rule}`),
    "",
  ];
  for (const fixture of listing) {
    lines.push(
      `${fixture.name} (${fixture.kind})${fixture.description ? `: ${fixture.description}` : ""}`,
    );
    lines.push(`  served for: ${fixture.served_when ?? "on request only"}`);
    lines.push(
      `  ask for it: header "${fixture.ask.header}" or "${fixture.ask.marker}" in the prompt`,
    );
  }
  return lines;
}

/** What `deno task replay` was asked to do: list the fixtures, or replay one. */
export type ReplayArgs =
  | { list: true; json: boolean }
  | {
    list: false;
    /** A path, or a fixture's name (see lib/cli/replay_source.ts). */
    file: string;
    json: boolean;
    /** The pace multiplier; unset: 1, or 0 with `json`. */
    speed?: number;
  };

/** The text `--help` prints, and a usage error after its one line. */
export const REPLAY_USAGE = `usage: deno task replay FILE.sse|NAME [--json] [--speed N]
       deno task replay --list [--json]
Replays a recorded stream (a file, or the fixture NAME that --list shows, when there is no such
file) through the decoder and the accumulator, as a client sees it: the text as it arrives, then
time to first token, total time, tokens and cost. An HTTP error fixture (NAME.http.json) shows
its status, error and retry-after instead.
  --json     print one JSON object instead (no waiting unless --speed is given)
  --speed N  1 (the default): the recorded pace, or replay mode's; 2 twice as fast; 0 no waiting
  --list     every fixture replay mode serves, when it is served and how to ask for it
Exits 0 once the recording is shown, even one of a failure (an error event, a cut stream, an
HTTP error); 1 when FILE or NAME cannot be read or holds no stream (a fixture's NAME.json);
2 for bad usage or a bad environment variable.`;

/** Parses the command line; throws a one-line message for bad input. */
export function parseReplayArgs(args: string[]): ReplayArgs | { help: true } {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      json: { type: "boolean", default: false },
      list: { type: "boolean", default: false },
      speed: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return { help: true };
  if (values.list) {
    if (positionals.length > 0) throw new Error("--list takes no FILE or NAME");
    return { list: true, json: values.json };
  }
  if (positionals.length !== 1) throw new Error("name one FILE or NAME to replay, or pass --list");
  const speed = values.speed === undefined ? undefined : Number(values.speed);
  if (speed !== undefined && (!Number.isFinite(speed) || speed < 0)) {
    throw new Error(`--speed must be a number >= 0 (got ${values.speed})`);
  }
  return { file: positionals[0], list: false, json: values.json, speed };
}

async function main(args: string[]): Promise<number> {
  const parsed = argsOrExitCode("replay", REPLAY_USAGE, () => parseReplayArgs(args));
  if (typeof parsed === "number") return parsed;
  const config = configOrExitCode("replay");
  if (typeof config === "number") return config;
  if (parsed.list) {
    const listing = describeFixtures(await loadFixtures(config.fixturesDir));
    if (parsed.json) {
      console.log(JSON.stringify({ selection: SELECTION_RULES, fixtures: listing }, null, 2));
    } else console.log(listingLines(listing).join("\n"));
    return 0;
  }
  const speed = parsed.speed ?? (parsed.json ? 0 : 1);
  let fixture: Fixture;
  try {
    fixture = await openFixture(parsed.file, config.fixturesDir);
  } catch (error) {
    const message = (error as Error).message;
    console.error(
      error instanceof NoFixtureError
        ? `replay: ${message}`
        : `replay: cannot read ${parsed.file}: ${message}`,
    );
    return 1;
  }
  if (fixture.http) {
    // Replay mode answers an HTTP error at once, so there is no pace to keep here either.
    const summary = httpErrorSummary(fixture.http);
    if (parsed.json) console.log(JSON.stringify(summary, null, 2));
    else console.log(httpErrorLines(summary).join("\n"));
    return 0;
  }
  const encoder = new TextEncoder();
  const result = await replayFixture(fixture, {
    speed,
    ttftMs: config.replay.ttftMs,
    tokensPerSecond: config.replay.tokensPerSecond,
    onText: parsed.json ? undefined : (delta) => Deno.stdout.writeSync(encoder.encode(delta)),
  });
  if (parsed.json) console.log(JSON.stringify(resultJson(result, config.prices), null, 2));
  else console.log("\n\n" + summaryLines(result, config.prices).join("\n"));
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
