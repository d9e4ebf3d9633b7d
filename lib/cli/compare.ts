/**
 * `deno task compare [PROMPT] [--url URL] [--key KEY] [--runs N] [--model M] [--max-tokens N]`:
 * the tutorial's time-to-first-token experiment as a command. It sends the same request through
 * a running sluice, streaming and non-streaming, `--runs` times each (interleaved, alternating
 * which goes first), and prints time to first token, total time, tokens and cost side by side
 * (each answer priced from its own usage with the price table, `SLUICE_PRICES` applied).
 *
 * Streaming TTFT is measured here, at the client, to the first content delta; non-streaming has
 * nothing before the whole body, so its TTFT is its total time, as the tutorial measures it.
 * Works the same against sluice in replay mode (no Anthropic key needed).
 */
import { parseArgs } from "node:util";
import { EventAccumulator } from "../stream/accumulator.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { parseConfig } from "../config.ts";
import { createSseDecoder } from "../stream/sse.ts";
import type { PriceTable } from "../stats/prices.ts";
import { shippedPrices } from "../stats/prices.ts";
import { costOfMessage } from "../stats/cost.ts";
import { formatUsd } from "../chat/encoding.ts";
import { argsOrExitCode } from "./usage.ts";

/** The tutorial's prompt and cut-off. */
export const DEFAULT_PROMPT =
  "Write me a long essay explaining the history of the American Revolution";
export const DEFAULT_MAX_TOKENS = 500;

/** What to compare. */
export interface CompareOptions {
  /** sluice's base URL. */
  url: string;
  /** A gateway key, when sluice has them. */
  key?: string;
  runs: number;
  model: string;
  maxTokens: number;
  prompt: string;
  /** Prices each answer from its usage (default: the shipped table). */
  prices?: PriceTable;
  /** Injectable for tests. */
  fetch?: typeof fetch;
  clock?: Clock;
}

/** One request's measurements. */
export interface RunResult {
  run: number;
  streaming: boolean;
  status: number;
  ttftMs: number | null;
  totalMs: number;
  inputTokens: number | null;
  outputTokens: number | null;
  /** What the answer cost in USD, from its usage; null when unpriced or not answered. */
  costUsd: number | null;
  /** The error sluice or the API reported, if any. */
  error: string | null;
}

/** Runs the experiment; `onResult` sees each run as it finishes. */
export async function runCompare(
  options: CompareOptions,
  onResult: (result: RunResult) => void = () => {},
): Promise<RunResult[]> {
  const results: RunResult[] = [];
  for (let run = 1; run <= options.runs; run++) {
    // Alternate which mode goes first, so neither always benefits from a warm connection.
    const order = run % 2 === 1 ? [true, false] : [false, true];
    for (const streaming of order) {
      const result = await measure(options, run, streaming);
      results.push(result);
      onResult(result);
    }
  }
  return results;
}

async function measure(options: CompareOptions, run: number, streaming: boolean) {
  const doFetch = options.fetch ?? fetch;
  const clock = options.clock ?? systemClock;
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "anthropic-version": "2023-06-01",
  };
  if (options.key) headers["x-api-key"] = options.key;
  const body = JSON.stringify({
    model: options.model,
    max_tokens: options.maxTokens,
    stream: streaming,
    messages: [{ role: "user", content: options.prompt }],
  });
  const startedAt = clock.now();
  const response = await doFetch(new URL("/v1/messages", options.url), {
    method: "POST",
    headers,
    body,
  });
  const base = { run, streaming, status: response.status };
  const isStream = (response.headers.get("content-type") ?? "").includes("text/event-stream");
  if (!streaming || !isStream || !response.body) {
    const text = await response.text();
    const totalMs = clock.now() - startedAt;
    const json = safeJson(text);
    const usage = json?.usage as Record<string, unknown> | undefined;
    return {
      ...base,
      ttftMs: response.ok ? totalMs : null,
      totalMs,
      inputTokens: numberOrNull(usage?.input_tokens),
      outputTokens: numberOrNull(usage?.output_tokens),
      costUsd: response.ok ? usdOf(options, json) : null,
      error: response.ok ? null : errorText(json, response.status),
    };
  }
  const accumulator = new EventAccumulator({ clock, startedAt });
  const decoder = createSseDecoder((event) => accumulator.push(event));
  const reader = response.body.getReader();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    decoder.feed(value);
  }
  decoder.end();
  const result = accumulator.end();
  const usage = result.message?.usage as unknown as Record<string, unknown> | undefined;
  return {
    ...base,
    ttftMs: result.metrics.ttftMs,
    totalMs: result.metrics.totalMs ?? clock.now() - startedAt,
    inputTokens: numberOrNull(usage?.input_tokens),
    outputTokens: numberOrNull(usage?.output_tokens),
    costUsd: usdOf(options, result.message),
    error: result.error
      ? `${result.error.type}: ${result.error.message}`
      : result.complete
      ? null
      : "the stream ended early",
  };
}

/** The table of runs, then medians side by side. */
export function formatReport(results: RunResult[], options: CompareOptions): string {
  const lines = [
    `sluice compare: ${options.runs} run(s) each, streaming and non-streaming, interleaved`,
    `  url     ${new URL("/v1/messages", options.url)}`,
    `  model   ${options.model}   max_tokens ${options.maxTokens}`,
    `  prompt  ${JSON.stringify(options.prompt)}`,
    "",
    `${pad("run", 4)}${pad("mode", 15)}${lpad("first token", 12)}${lpad("total", 11)}` +
    `${lpad("output tokens", 15)}${lpad("cost", 12)}`,
  ];
  for (const r of results) {
    lines.push(
      `${lpad(String(r.run), 3)} ${pad(r.streaming ? "streaming" : "non-streaming", 15)}` +
        `${lpad(seconds(r.ttftMs), 12)}${lpad(seconds(r.totalMs), 11)}` +
        `${lpad(r.outputTokens === null ? "-" : String(r.outputTokens), 15)}` +
        `${lpad(r.costUsd === null ? "-" : formatUsd(r.costUsd), 12)}` +
        (r.error ? `   error: ${r.error}` : ""),
    );
  }
  const ok = (streaming: boolean) => results.filter((r) => r.streaming === streaming && !r.error);
  const s = ok(true), n = ok(false);
  const med = (rs: RunResult[], pick: (r: RunResult) => number | null) =>
    median(rs.map(pick).filter((v): v is number => v !== null));
  const sTtft = med(s, (r) => r.ttftMs), nTtft = med(n, (r) => r.ttftMs);
  const sTotal = med(s, (r) => r.totalMs), nTotal = med(n, (r) => r.totalMs);
  const sTok = med(s, (r) => r.outputTokens), nTok = med(n, (r) => r.outputTokens);
  const sCost = med(s, (r) => r.costUsd), nCost = med(n, (r) => r.costUsd);
  const usd = (v: number | null) => (v === null ? "-" : formatUsd(v));
  let verdict = "";
  if (sTtft !== null && nTtft !== null && sTtft > 0) {
    const ratio = nTtft / sTtft;
    verdict = ratio > 1
      ? `streaming ${ratio.toFixed(1)}x sooner`
      : "streaming no sooner (a short answer arrives all at once)";
  }
  let totals = "";
  if (sTotal !== null && nTotal !== null && nTotal > 0) {
    const diff = (sTotal - nTotal) / nTotal;
    totals = Math.abs(diff) < 0.1
      ? "about the same"
      : `streaming ${Math.abs(diff * 100).toFixed(0)}% ${diff > 0 ? "longer" : "shorter"}`;
  }
  lines.push(
    "",
    `${pad(`median of ${options.runs}`, 22)}${lpad("streaming", 12)}${lpad("non-streaming", 15)}`,
    `${pad("time to first token", 22)}${lpad(seconds(sTtft), 12)}${lpad(seconds(nTtft), 15)}` +
      (verdict ? `   ${verdict}` : ""),
    `${pad("total time", 22)}${lpad(seconds(sTotal), 12)}${lpad(seconds(nTotal), 15)}` +
      (totals ? `   ${totals}` : ""),
    `${pad("output tokens", 22)}${lpad(count(sTok), 12)}${lpad(count(nTok), 15)}`,
    `${pad("cost", 22)}${lpad(usd(sCost), 12)}${lpad(usd(nCost), 15)}` +
      (sCost === null && nCost === null ? `   no price for ${options.model}` : ""),
  );
  if (s.length === 0 || n.length === 0) {
    lines.push("", "some runs failed, so there is nothing to compare for that mode (see above)");
  }
  return lines.join("\n");
}

/** Parses the command line; throws a message for bad input. */
export function parseCompareArgs(
  args: string[],
  defaultModel: string,
): CompareOptions | { help: true } {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      url: { type: "string", default: "http://localhost:8000" },
      key: { type: "string" },
      runs: { type: "string", default: "3" },
      model: { type: "string", default: defaultModel },
      "max-tokens": { type: "string", default: String(DEFAULT_MAX_TOKENS) },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return { help: true };
  const runs = Number(values.runs);
  const maxTokens = Number(values["max-tokens"]);
  if (!Number.isInteger(runs) || runs < 1 || runs > 100) {
    throw new Error(`--runs must be a whole number from 1 to 100 (got ${values.runs})`);
  }
  if (!Number.isInteger(maxTokens) || maxTokens < 1) {
    throw new Error(`--max-tokens must be a positive whole number (got ${values["max-tokens"]})`);
  }
  try {
    new URL(values.url);
  } catch {
    throw new Error(`--url must be a URL such as http://localhost:8000 (got ${values.url})`);
  }
  return {
    url: values.url,
    key: values.key,
    runs,
    model: values.model,
    maxTokens,
    prompt: positionals.join(" ").trim() || DEFAULT_PROMPT,
  };
}

const USAGE = `usage: deno task compare [PROMPT] [--url URL] [--key KEY] [--runs N] [--model M]
                         [--max-tokens N]
Sends PROMPT through a running sluice streaming and non-streaming, N times each (default 3),
and prints time to first token, total time and tokens side by side.
  --url         sluice's address (default http://localhost:8000)
  --key         a gateway key, when sluice has SLUICE_API_KEYS
  --model       the model (default SLUICE_DEFAULT_MODEL)
  --max-tokens  the answer's cut-off (default ${DEFAULT_MAX_TOKENS}, as in the tutorial)`;

function pad(s: string, n: number) {
  return s.padEnd(n);
}
function lpad(s: string, n: number) {
  return s.padStart(n);
}
function seconds(ms: number | null) {
  return ms === null ? "-" : `${(ms / 1000).toFixed(3)} s`;
}
function count(n: number | null) {
  return n === null ? "-" : String(Math.round(n));
}
function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
function usdOf(options: CompareOptions, message: unknown): number | null {
  const cost = costOfMessage(
    options.prices ?? shippedPrices(),
    message as Parameters<typeof costOfMessage>[1],
  );
  return cost.priced ? cost.usd : null;
}
function numberOrNull(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}
function safeJson(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text);
    return v && typeof v === "object" ? v : null;
  } catch {
    return null;
  }
}
function errorText(json: Record<string, unknown> | null, status: number): string {
  const error = json?.error as { type?: string; message?: string } | undefined;
  return error?.type ? `${error.type}: ${error.message ?? ""}` : `HTTP ${status}`;
}

if (import.meta.main) {
  let config: ReturnType<typeof parseConfig>;
  try {
    config = parseConfig(Deno.env.toObject());
  } catch {
    config = parseConfig({});
  }
  const defaultModel = config.defaultModel;
  const options = argsOrExitCode("compare", USAGE, () => parseCompareArgs(Deno.args, defaultModel));
  if (typeof options === "number") Deno.exit(options);
  const opts = { ...options, prices: config.prices };
  console.log(`sending ${opts.runs * 2} requests to ${opts.url} …`);
  try {
    const results = await runCompare(opts, (r) =>
      console.log(
        `  run ${r.run} ${r.streaming ? "streaming" : "non-streaming"}: ` +
          (r.error ? `error (${r.error})` : `first token ${seconds(r.ttftMs)}`),
      ));
    console.log("\n" + formatReport(results, opts));
    if (results.every((r) => r.error)) Deno.exit(1);
  } catch (error) {
    console.error(
      `compare: could not reach sluice at ${opts.url} (${(error as Error).message}).\n` +
        "Start it with `deno task start` (replay mode needs no key), or pass --url.",
    );
    Deno.exit(1);
  }
}
