/**
 * The stats' KV layout: every key is built and every stored counter decoded here, once, for the
 * writer (lib/stats/kv_stats.ts), `/stats` and `/metrics` alike.
 *
 * KV layout (every key starts with `"sluice"`):
 * - `["sluice","stats","all", endpoint, model, streaming, outcome, ...metric]`: all-time
 *   counters, `Deno.KvU64`, added to with atomic `sum`, so every isolate adds into the same keys.
 * - `["sluice","stats","w", "5m"|"1h", bucketStart, instance, endpoint, model, streaming,
 *   outcome, ...metric]`: the recent windows. KV's `sum` cannot expire, so each instance keeps its
 *   own running totals for a time bucket and `set`s them with `expireIn`; no two instances write
 *   the same key, readers add the instances up, and old buckets disappear on their own.
 * - `["sluice","stats","meta","first_at"|"last_at"]`: atomic `min`/`max` of request times.
 * - `["sluice","recent", startedAt, instance, seq]`: the recent-requests log, with `expireIn`
 *   and at most `recentLimit` entries per instance.
 * - `["sluice","stats","key", keyId, model, "cost"|"requests"]`: all-time cost (pico-dollars)
 *   and requests per gateway key id and model, for `/stats`' `cost_usd.by_key`.
 *
 * `...metric` is one of: `requests`; `retries`; `tokens, input|output|cache_creation_input|
 * cache_read_input`; `events, NAME`; `status, CODE`; and for each latency `ttft|total|
 * upstream_ttft` the histogram parts `b, INDEX` (count per bucket of lib/histogram.ts), `n`
 * (count) and `us` (sum in microseconds); `cost, pusd` (USD in whole pico-dollars, see
 * lib/stats/cost.ts) and `cost, unpriced` (requests that used tokens of a model with no price).
 */
import { bucketIndex } from "./histogram.ts";
import type { RequestSummary } from "./request_summary.ts";
import { PICO_PER_USD } from "./cost.ts";

/** The labels of one series (the Prometheus label set). */
export interface SeriesLabels {
  endpoint: string;
  model: string;
  streaming: boolean;
  outcome: string;
}

/** One stored number: a series, the metric path inside it, and its value. */
export interface Row {
  labels: SeriesLabels;
  metric: Deno.KvKeyPart[];
  value: number;
}

/** The latencies kept as histograms, by metric name. */
export const LATENCIES = ["ttft", "total", "upstream_ttft"] as const;
/** A latency metric name. */
export type LatencyName = typeof LATENCIES[number];

/** A recent window, built from time buckets of one granularity. */
export interface WindowSpec {
  name: string;
  granularity: string;
  bucketMs: number;
  /** How many buckets, the current one included, make the window. */
  buckets: number;
}

/** The windows of `/stats`: the last hour (5-minute buckets) and the last 24 hours (hourly). */
export const WINDOWS: readonly WindowSpec[] = [
  { name: "last_hour", granularity: "5m", bucketMs: 5 * 60_000, buckets: 12 },
  { name: "last_24h", granularity: "1h", bucketMs: 60 * 60_000, buckets: 24 },
];

const PREFIX = ["sluice", "stats"] as const;
/** Key parts before the series labels of an all-time counter. */
const ALL_PARTS = 3;
/** Key parts before the series labels of a window counter (prefix, "w", granularity, bucket, instance). */
const WINDOW_PARTS = 6;
const SERIES_PARTS = 4;

/** The series part of a key: endpoint, model, streaming, outcome. */
export type Series = [string, string, boolean, string];

/** The series of `labels`, as it appears in keys. */
export function seriesOf(labels: SeriesLabels): Series {
  return [labels.endpoint, labels.model, labels.streaming, labels.outcome];
}

/** The key of an all-time counter. */
export function allKey(series: Series, metric: Deno.KvKeyPart[]): Deno.KvKey {
  return [...PREFIX, "all", ...series, ...metric];
}

/** The key of one instance's running total for a window bucket. */
export function windowKey(
  granularity: string,
  bucketStart: number,
  instance: string,
  series: Series,
  metric: Deno.KvKeyPart[],
): Deno.KvKey {
  return [...PREFIX, "w", granularity, bucketStart, instance, ...series, ...metric];
}

/** The keys of the first and last request times (`min` and `max`). */
export const FIRST_AT_KEY: Deno.KvKey = [...PREFIX, "meta", "first_at"];
/** See {@link FIRST_AT_KEY}. */
export const LAST_AT_KEY: Deno.KvKey = [...PREFIX, "meta", "last_at"];

/** The prefix of the recent-requests log, newest last. */
export const RECENT_PREFIX: Deno.KvKey = ["sluice", "recent"];

/** The key of one recent-log entry. */
export function recentKey(startedAt: number, instance: string, seq: number): Deno.KvKey {
  return [...RECENT_PREFIX, Math.floor(startedAt), instance, seq];
}

/** The key of a gateway key's all-time counter for one model (`cost` or `requests`). */
export function keyCounterKey(
  keyId: string,
  model: string,
  metric: "cost" | "requests",
): Deno.KvKey {
  return [...PREFIX, "key", keyId, model, metric];
}

/** Where the per-key counters are. */
export const KEY_COUNTERS_PREFIX: Deno.KvKey = [...PREFIX, "key"];

/** A request's cost in whole pico-dollars (0 when unpriced or not costed). */
export function picoUsdOf(summary: RequestSummary): bigint {
  const usd = summary.costUsd;
  if (usd === undefined || usd === null || !Number.isFinite(usd) || usd <= 0) return 0n;
  return BigInt(Math.round(usd * PICO_PER_USD));
}

/** Where the all-time counters are, and how many key parts precede their labels. */
export const ALL_SELECTOR: { selector: Deno.KvListSelector; skip: number } = {
  selector: { prefix: [...PREFIX, "all"] },
  skip: ALL_PARTS,
};

/** Where the counters of `granularity`'s buckets from `from` to before `to` are. */
export function windowSelector(
  granularity: string,
  from: number,
  to: number,
): { selector: Deno.KvListSelector; skip: number } {
  const base = [...PREFIX, "w", granularity];
  return { selector: { start: [...base, from], end: [...base, to] }, skip: WINDOW_PARTS };
}

/** The series labels of a summary, cleaned so that a label is never unbounded free text. */
export function labelsOf(summary: RequestSummary): SeriesLabels {
  return {
    endpoint: cleanLabel(summary.endpoint, "unknown"),
    model: cleanLabel(summary.model, "unknown"),
    streaming: summary.streaming,
    outcome: cleanLabel(summary.outcome, "unknown"),
  };
}

/** `value` when it is a short identifier, else `other` (`fallback` when empty). */
export function cleanLabel(value: string | null | undefined, fallback: string): string {
  if (!value) return fallback;
  // Model names and error types are short identifiers; anything else is grouped, so a caller
  // cannot fill the store (or a dashboard) with made-up values.
  return /^[\w.:@/-]{1,100}$/.test(value) ? value : "other";
}

/** What one request adds to its series: `[metric path, amount]`, amounts ≥ 0. */
export function contributions(summary: RequestSummary): [Deno.KvKeyPart[], bigint][] {
  const parts: [Deno.KvKeyPart[], bigint][] = [[["requests"], 1n]];
  const int = (n: number) => BigInt(Math.max(0, Math.round(Number.isFinite(n) ? n : 0)));
  if (summary.retries > 0) parts.push([["retries"], int(summary.retries)]);
  const u = summary.usage;
  const tokens: [string, number][] = [
    ["input", u.input_tokens],
    ["output", u.output_tokens],
    ["cache_creation_input", u.cache_creation_input_tokens],
    ["cache_read_input", u.cache_read_input_tokens],
  ];
  for (const [name, n] of tokens) if (n > 0) parts.push([["tokens", name], int(n)]);
  for (const [name, n] of Object.entries(summary.events)) {
    if (n > 0) parts.push([["events", cleanLabel(name, "unknown")], int(n)]);
  }
  parts.push([["status", summary.status], 1n]);
  const pico = picoUsdOf(summary);
  if (pico > 0n) parts.push([["cost", "pusd"], pico]);
  if (summary.costUsd === null) parts.push([["cost", "unpriced"], 1n]);
  const latencies: [LatencyName, number | null][] = [
    ["ttft", summary.ttftMs],
    ["total", summary.totalMs],
    ["upstream_ttft", summary.upstreamTtftMs],
  ];
  for (const [name, ms] of latencies) {
    if (ms === null || !Number.isFinite(ms)) continue;
    const value = Math.max(0, ms);
    parts.push([[name, "b", bucketIndex(value)], 1n]);
    parts.push([[name, "n"], 1n]);
    const us = int(value * 1000);
    if (us > 0n) parts.push([[name, "us"], us]);
  }
  return parts;
}

/** Decodes a stored counter: `rest` is its key after the prefix, up to the series labels. */
export function decodeRow(rest: Deno.KvKey, value: unknown): Row | null {
  if (rest.length <= SERIES_PARTS) return null;
  const [endpoint, model, streaming, outcome] = rest;
  const n = value instanceof Deno.KvU64 ? Number(value.value) : Number(value);
  if (!Number.isFinite(n)) return null;
  return {
    labels: {
      endpoint: String(endpoint),
      model: String(model),
      streaming: streaming === true,
      outcome: String(outcome),
    },
    metric: rest.slice(SERIES_PARTS),
    value: n,
  };
}
