/**
 * The figures of `/stats`, built from stored rows: counts, tokens, latency percentiles split by
 * streaming or not, and the tutorial's comparison of time to first token.
 */
import type { Histogram } from "./histogram.ts";
import { emptyHistogram, merge, quantile } from "./histogram.ts";
import type { LatencyName, Row, SeriesLabels } from "./kv_layout.ts";
import { PICO_PER_USD, roundUsd } from "./cost.ts";

/** What a set of requests cost, in USD, and how many of them had no price. */
export interface CostFigures {
  total: number;
  /** Requests that used tokens of a model the price table does not know (not in `total`). */
  unpriced_requests: number;
}

/** Token counts as `/stats` shows them. */
export interface TokenFigures {
  input: number;
  output: number;
  cache_creation_input: number;
  cache_read_input: number;
}

/** Count, percentiles and mean of one latency, in ms (null when there are no values). */
export interface LatencyFigures {
  count: number;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  mean: number | null;
}

/** A latency split by streaming or not. */
export interface LatencySplit {
  streaming: LatencyFigures;
  non_streaming: LatencyFigures;
}

/** The tutorial's comparison, read off the p50s. */
export interface Comparison {
  ttft_p50_ms: { streaming: number | null; non_streaming: number | null };
  total_p50_ms: { streaming: number | null; non_streaming: number | null };
  /** How many times sooner the first token arrives with streaming (p50), when both exist. */
  first_token_speedup: number | null;
  summary: string;
}

/** The figures of one set of requests. */
export interface StatsView {
  requests: {
    total: number;
    streaming: number;
    non_streaming: number;
    ok: number;
    errors: number;
  };
  /** Requests that did not end `ok`, by outcome. */
  errors: Record<string, number>;
  statuses: Record<string, number>;
  retries: number;
  tokens: TokenFigures;
  events: Record<string, number>;
  /** Latencies of requests that ended `ok`. */
  ttft_ms: LatencySplit;
  total_ms: LatencySplit;
  upstream_ttft_ms: LatencySplit;
  comparison: Comparison;
  cost_usd: CostFigures;
}

/** A view plus the same figures per model and per endpoint. */
export interface StatsSection extends StatsView {
  cost_usd: CostFigures & { by_model: Record<string, number> };
  by_model: Record<string, StatsView>;
  by_endpoint: Record<string, StatsView>;
}

/** The body of `GET /stats`. */
export interface StatsReport extends StatsSection {
  /** All time, also by gateway key id (a short hash of the key, never the key). */
  cost_usd: CostFigures & { by_model: Record<string, number>; by_key: Record<string, number> };
  generated_at: string;
  first_request_at: string | null;
  last_request_at: string | null;
  windows: Record<string, StatsSection & { from: string; to: string }>;
  percentiles: { method: string; relative_error: number };
  storage: { write_failures: number; pending_writes: number };
}

/** The histogram of latency `name` over `rows`. */
export function histogramOf(rows: Row[], name: LatencyName): Histogram {
  const histogram = emptyHistogram();
  for (const row of rows) {
    if (row.metric[0] !== name) continue;
    const part = emptyHistogram();
    if (row.metric[1] === "b") part.buckets.set(Number(row.metric[2]), row.value);
    else if (row.metric[1] === "n") part.count = row.value;
    else if (row.metric[1] === "us") part.sumMs = row.value / 1000;
    merge(histogram, part);
  }
  return histogram;
}

function figures(histogram: Histogram): LatencyFigures {
  const q = (p: number) => {
    const v = quantile(histogram, p);
    return v === null ? null : round(v, 2);
  };
  return {
    count: histogram.count,
    p50: q(0.5),
    p90: q(0.9),
    p99: q(0.99),
    mean: histogram.count > 0 ? round(histogram.sumMs / histogram.count, 2) : null,
  };
}

function split(rows: Row[], name: LatencyName): LatencySplit {
  const ok = rows.filter((row) => row.labels.outcome === "ok");
  return {
    streaming: figures(histogramOf(ok.filter((row) => row.labels.streaming), name)),
    non_streaming: figures(histogramOf(ok.filter((row) => !row.labels.streaming), name)),
  };
}

function add(record: Record<string, number>, key: string, n: number) {
  record[key] = (record[key] ?? 0) + n;
}

/** Builds the figures of a set of rows. */
export function view(rows: Row[]): StatsView {
  const requests = { total: 0, streaming: 0, non_streaming: 0, ok: 0, errors: 0 };
  const errors: Record<string, number> = {};
  const statuses: Record<string, number> = {};
  const events: Record<string, number> = {};
  const tokens: TokenFigures = {
    input: 0,
    output: 0,
    cache_creation_input: 0,
    cache_read_input: 0,
  };
  let retries = 0;
  let pico = 0;
  let unpriced = 0;
  for (const row of rows) {
    const [kind, name] = row.metric;
    if (kind === "requests") {
      requests.total += row.value;
      if (row.labels.streaming) requests.streaming += row.value;
      else requests.non_streaming += row.value;
      if (row.labels.outcome === "ok") requests.ok += row.value;
      else {
        requests.errors += row.value;
        add(errors, row.labels.outcome, row.value);
      }
    } else if (kind === "retries") retries += row.value;
    else if (kind === "tokens" && String(name) in tokens) {
      tokens[String(name) as keyof TokenFigures] += row.value;
    } else if (kind === "events") add(events, String(name), row.value);
    else if (kind === "status") add(statuses, String(name), row.value);
    else if (kind === "cost" && name === "pusd") pico += row.value;
    else if (kind === "cost" && name === "unpriced") unpriced += row.value;
  }
  const ttft = split(rows, "ttft");
  const total = split(rows, "total");
  return {
    requests,
    errors,
    statuses,
    retries,
    tokens,
    events,
    ttft_ms: ttft,
    total_ms: total,
    upstream_ttft_ms: split(rows, "upstream_ttft"),
    comparison: compare(ttft, total),
    cost_usd: { total: roundUsd(pico / PICO_PER_USD), unpriced_requests: unpriced },
  };
}

function compare(ttft: LatencySplit, total: LatencySplit): Comparison {
  const s = ttft.streaming.p50, n = ttft.non_streaming.p50;
  const speedup = s !== null && n !== null && s > 0 ? round(n / s, 1) : null;
  const ts = total.streaming.p50, tn = total.non_streaming.p50;
  let summary: string;
  if (s === null || n === null) {
    summary = "send requests both streaming and non-streaming to compare time to first token";
  } else {
    summary = `first token after ${fmt(s)} streaming vs ${fmt(n)} non-streaming (p50)` +
      (speedup !== null && speedup > 1 ? `, ${speedup}x sooner with streaming` : "") +
      `; total time ${fmt(ts)} vs ${fmt(tn)}`;
  }
  return {
    ttft_p50_ms: { streaming: s, non_streaming: n },
    total_p50_ms: { streaming: ts, non_streaming: tn },
    first_token_speedup: speedup,
    summary,
  };
}

function fmt(ms: number | null): string {
  if (ms === null) return "n/a";
  return ms >= 1000 ? `${round(ms / 1000, 2)} s` : `${round(ms, 1)} ms`;
}

/** A view plus per-model and per-endpoint views. */
export function section(rows: Row[]): StatsSection {
  const groups = (pick: (labels: SeriesLabels) => string) => {
    const by = new Map<string, Row[]>();
    for (const row of rows) {
      const key = pick(row.labels);
      by.set(key, [...(by.get(key) ?? []), row]);
    }
    return Object.fromEntries(
      [...by].sort(([a], [b]) => a.localeCompare(b)).map((
        [key, group],
      ) => [key, view(group)]),
    );
  };
  const whole = view(rows);
  const byModel = groups((labels) => labels.model);
  return {
    ...whole,
    cost_usd: {
      ...whole.cost_usd,
      by_model: Object.fromEntries(
        Object.entries(byModel).map(([model, v]) => [model, v.cost_usd.total]),
      ),
    },
    by_model: byModel,
    by_endpoint: groups((labels) => labels.endpoint),
  };
}

/** `n` rounded to `digits` decimals. */
export function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}
