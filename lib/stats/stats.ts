/**
 * Stats that survive: a Deno KV sink for finished requests and the reader behind `GET /stats`,
 * `GET /stats/recent` and `GET /metrics`.
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
 *
 * `...metric` is one of: `requests`; `retries`; `tokens, input|output|cache_creation_input|
 * cache_read_input`; `events, NAME`; `status, CODE`; and for each latency `ttft|total|
 * upstream_ttft` the histogram parts `b, INDEX` (count per bucket of lib/histogram.ts), `n`
 * (count) and `us` (sum in microseconds).
 *
 * Writing never touches the response path: `record` only adds to memory and schedules a commit.
 * Commits are serialized per instance, at most one per `writeIntervalMs`; records that arrive
 * meanwhile are batched into the next one. A failed commit is logged and counted, and its changes
 * are kept for the next attempt.
 */
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { Histogram } from "./histogram.ts";
import { bucketIndex, emptyHistogram, merge, quantile, RELATIVE_ERROR } from "./histogram.ts";
import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import type { RequestSummary, StatsSink } from "./request_summary.ts";

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
const RECENT = ["sluice", "recent"] as const;
const SERIES_PARTS = 4;
/** Deno KV accepts up to 1000 mutations per atomic operation; stay well under it. */
const MAX_MUTATIONS = 500;

/** One entry of `GET /stats/recent`: figures only, never a prompt, an answer or a key. */
export interface RecentEntry {
  id: string;
  time: string;
  endpoint: string;
  model: string | null;
  streaming: boolean;
  outcome: string;
  status: number;
  retries: number;
  ttft_ms: number | null;
  total_ms: number;
  upstream_ttft_ms: number | null;
  tokens: TokenFigures;
  stop_reason: string | null;
  events: Record<string, number>;
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
}

/** A view plus the same figures per model and per endpoint. */
export interface StatsSection extends StatsView {
  by_model: Record<string, StatsView>;
  by_endpoint: Record<string, StatsView>;
}

/** The body of `GET /stats`. */
export interface StatsReport extends StatsSection {
  generated_at: string;
  first_request_at: string | null;
  last_request_at: string | null;
  windows: Record<string, StatsSection & { from: string; to: string }>;
  percentiles: { method: string; relative_error: number };
  storage: { write_failures: number; pending_writes: number };
}

/** What the stats routes read. */
export interface StatsSource {
  report(): Promise<StatsReport>;
  recent(limit: number): Promise<RecentEntry[]>;
  /** All-time rows (for `/metrics`). */
  rows(): Promise<Row[]>;
  /** Failed writes of this instance since it started. */
  readonly writeFailures: number;
}

/** True when `stats` can also be read (the KV sink can; the in-memory test sink cannot). */
export function isStatsSource(stats: unknown): stats is StatsSource {
  return !!stats && typeof (stats as StatsSource).report === "function";
}

/** Options for {@link createKvStats}. */
export interface KvStatsOptions {
  kv: Deno.Kv;
  /** Wall-clock time for windows and expiry (epoch ms). */
  clock?: Clock;
  logger?: Logger;
  /** Distinguishes this process's window keys; random by default, new on every start. */
  instanceId?: string;
  /** Recent-log entries this instance keeps (older ones are deleted). */
  recentLimit?: number;
  /** How long a recent-log entry lives. */
  recentTtlMs?: number;
  /** Injectable for tests of failing writes. */
  commit?: (kv: Deno.Kv, mutations: Deno.KvMutation[]) => Promise<void>;
  /**
   * How long a record may wait for its write, in ms, so that the records of that time share one
   * atomic write (counters added up in memory first). 0 (the default here): write as soon as the
   * previous write is over. `main.ts` passes `SLUICE_STATS_WRITE_MS`. Reads (`report`, `rows`,
   * `recent`) write what is waiting first, so this instance's figures are never behind.
   */
  writeIntervalMs?: number;
}

/** The KV sink and reader. */
export interface KvStats extends StatsSink, StatsSource {
  /**
   * Adds a summary in memory and schedules a write; never throws. The promise settles once the
   * summary is in memory (a graceful shutdown waits for that, then calls {@link flush}), not when
   * it is written: with a write interval that could be a second later.
   */
  record(summary: RequestSummary): Promise<void>;
  /** Resolves once every record handed over so far has been written (or failed). */
  flush(): Promise<void>;
}

interface WindowState {
  spec: WindowSpec;
  bucketStart: number;
  totals: Map<string, { key: Deno.KvKey; value: number }>;
  dirty: Set<string>;
}

interface BatchItem {
  mutation: Deno.KvMutation;
  undo(): void;
}

/** Creates the KV-backed stats sink. */
export function createKvStats(options: KvStatsOptions): KvStats {
  const kv = options.kv;
  const clock = options.clock ?? systemClock;
  const logger = options.logger ?? silentLogger;
  const instance = options.instanceId ?? crypto.randomUUID();
  const recentLimit = options.recentLimit ?? 200;
  const recentTtlMs = Math.ceil(options.recentTtlMs ?? 24 * 60 * 60_000);
  const commit = options.commit ?? defaultCommit;
  const writeIntervalMs = options.writeIntervalMs ?? 0;

  const pendingSums = new Map<string, { key: Deno.KvKey; value: bigint }>();
  const windows = new Map<string, WindowState>();
  let recentQueue: { key: Deno.KvKey; value: RecentEntry }[] = [];
  const ownRecent: Deno.KvKey[] = [];
  let recentDeletes: Deno.KvKey[] = [];
  let firstAt: number | null = null;
  let lastAt: number | null = null;
  let seq = 0;
  let writeFailures = 0;
  let inflight: Promise<void> | null = null;
  // The timer of the next write when `writeIntervalMs` > 0.
  let waitTimer: ReturnType<typeof setTimeout> | undefined;

  // `id` names the key in memory; the key itself is built only the first time (this runs for
  // every request, on the thread that serves streams).
  const addSum = (id: string, key: () => Deno.KvKey, value: bigint) => {
    if (value <= 0n) return;
    const entry = pendingSums.get(id);
    if (entry) entry.value += value;
    else pendingSums.set(id, { key: key(), value });
  };

  function accumulate(summary: RequestSummary) {
    const labels = labelsOf(summary);
    const series = [labels.endpoint, labels.model, labels.streaming, labels.outcome];
    const parts = contributions(summary);
    const seriesId = JSON.stringify(series);
    const ids = parts.map(([metric]) => JSON.stringify(metric) + seriesId);
    parts.forEach(([metric, value], i) => {
      addSum(ids[i], () => [...PREFIX, "all", ...series, ...metric], value);
    });
    const endedAt = summary.startedAt + Math.max(0, summary.totalMs);
    for (const spec of WINDOWS) {
      const bucketStart = Math.floor(endedAt / spec.bucketMs) * spec.bucketMs;
      const id = `${spec.granularity}:${bucketStart}`;
      let state = windows.get(id);
      if (!state) {
        state = { spec, bucketStart, totals: new Map(), dirty: new Set() };
        windows.set(id, state);
      }
      for (let i = 0; i < parts.length; i++) {
        const [metric, value] = parts[i];
        const keyId = ids[i];
        const total = state.totals.get(keyId);
        if (total) total.value += Number(value);
        else {
          const key = [
            ...PREFIX,
            "w",
            spec.granularity,
            bucketStart,
            instance,
            ...series,
            ...metric,
          ];
          state.totals.set(keyId, { key, value: Number(value) });
        }
        state.dirty.add(keyId);
      }
    }
    firstAt = Math.min(firstAt ?? summary.startedAt, summary.startedAt);
    lastAt = Math.max(lastAt ?? endedAt, endedAt);
    const recentKey = [...RECENT, Math.floor(summary.startedAt), instance, ++seq];
    recentQueue.push({ key: recentKey, value: recentEntry(summary) });
    ownRecent.push(recentKey);
    if (ownRecent.length > recentLimit) {
      // The queue holds the newest of `ownRecent`, not yet written. When the oldest entry is
      // still among them it is dropped unwritten; otherwise it is in KV and gets deleted. (With
      // a write interval, a busy second records more than the limit: no set-then-delete.)
      const oldest = ownRecent.shift()!;
      if (recentQueue.length > ownRecent.length) recentQueue.shift();
      else recentDeletes.push(oldest);
    }
  }

  function takeBatch(): BatchItem[] {
    const now = clock.now();
    const items: BatchItem[] = [];
    for (const [id, { key, value }] of pendingSums) {
      items.push({
        mutation: { type: "sum", key, value: new Deno.KvU64(value) },
        undo: () => addSum(id, () => key, value),
      });
      pendingSums.delete(id);
    }
    for (const [id, state] of windows) {
      const expireAt = state.bucketStart + (state.spec.buckets + 1) * state.spec.bucketMs;
      if (expireAt <= now) {
        windows.delete(id); // past the window: KV lets it expire, memory lets it go
        continue;
      }
      const expireIn = Math.max(60_000, Math.ceil(expireAt - now));
      for (const keyId of state.dirty) {
        const { key, value } = state.totals.get(keyId)!;
        items.push({
          mutation: { type: "set", key, value, expireIn },
          undo: () => state.dirty.add(keyId),
        });
      }
      state.dirty.clear();
    }
    if (firstAt !== null && lastAt !== null) {
      const first = BigInt(Math.max(0, Math.floor(firstAt)));
      const last = BigInt(Math.max(0, Math.floor(lastAt)));
      items.push({
        mutation: {
          type: "min",
          key: [...PREFIX, "meta", "first_at"],
          value: new Deno.KvU64(first),
        },
        undo: () => (firstAt = Math.min(firstAt ?? Number(first), Number(first))),
      });
      items.push({
        mutation: { type: "max", key: [...PREFIX, "meta", "last_at"], value: new Deno.KvU64(last) },
        undo: () => (lastAt = Math.max(lastAt ?? Number(last), Number(last))),
      });
      firstAt = lastAt = null;
    }
    for (const entry of recentQueue) {
      items.push({
        mutation: { type: "set", key: entry.key, value: entry.value, expireIn: recentTtlMs },
        undo: () => recentQueue.unshift(entry),
      });
    }
    recentQueue = [];
    for (const key of recentDeletes) {
      items.push({ mutation: { type: "delete", key }, undo: () => recentDeletes.push(key) });
    }
    recentDeletes = [];
    return items;
  }

  async function drain() {
    while (true) {
      const items = takeBatch();
      if (items.length === 0) return;
      for (let i = 0; i < items.length; i += MAX_MUTATIONS) {
        const chunk = items.slice(i, i + MAX_MUTATIONS);
        try {
          await commit(kv, chunk.map((item) => item.mutation));
        } catch (error) {
          writeFailures++;
          logger.warn("stats write failed; kept for the next attempt", { error: String(error) });
          for (const item of items.slice(i)) item.undo();
          return; // try again with the next record or flush, not in a tight loop
        }
      }
    }
  }

  function writeNow(): Promise<void> {
    // Nobody awaits a scheduled write: whatever goes wrong is counted and logged, never thrown.
    inflight ??= drain().catch((error) => {
      writeFailures++;
      logger.warn("stats write failed", { error: String(error) });
    }).finally(() => (inflight = null));
    return inflight;
  }

  /**
   * A write for what was just recorded: right away, or with every record of the next
   * `writeIntervalMs`. Batching by time is what keeps stats cheap under load: one commit of a few
   * dozen merged mutations a second instead of one per request (the gateway bench measured the
   * per-request commits delaying other streams' deltas; see docs/performance.md).
   */
  function schedule(): void {
    if (writeIntervalMs <= 0) writeNow();
    else waitTimer ??= setTimeout(writeWaiting, writeIntervalMs);
  }

  /** Starts the write that was waiting for its interval now. */
  function writeWaiting(): Promise<void> {
    if (waitTimer !== undefined) clearTimeout(waitTimer);
    waitTimer = undefined;
    return writeNow();
  }

  /** Writes whatever is waiting and resolves when every write so far is over. */
  async function writeAll(): Promise<void> {
    while (inflight) await inflight;
    await writeWaiting();
  }

  async function rowsIn(selector: Deno.KvListSelector, skip: number): Promise<Row[]> {
    const rows: Row[] = [];
    for await (const entry of kv.list(selector)) {
      const row = toRow(entry.key.slice(skip), entry.value);
      if (row) rows.push(row);
    }
    return rows;
  }

  async function allRows(): Promise<Row[]> {
    return await rowsIn({ prefix: [...PREFIX, "all"] }, 3);
  }

  return {
    get writeFailures() {
      return writeFailures;
    },
    record(summary) {
      // One macrotask later, so a response's last bytes reach the socket before the stats work
      // runs (the gateway bench measured the last delta ~1 ms later without it). A timer here,
      // not in the app, so that apps without a KV sink (and their tests) start no timer at all.
      return new Promise<void>((resolve) => setTimeout(resolve, 0)).then(() => {
        try {
          accumulate(summary);
        } catch (error) {
          writeFailures++;
          logger.warn("stats record failed", { error: String(error) });
          return;
        }
        // Not awaited: the write goes out with the others of its interval; `flush` waits for it.
        schedule();
      });
    },
    async flush() {
      // Summaries travel through already-resolved promise chains before `record` sees them; one
      // macrotask lets every such chain run first. Then wait for the writes.
      await new Promise<void>((resolve) => setTimeout(resolve, 0));
      await writeAll();
    },
    async rows() {
      await writeAll();
      return await allRows();
    },
    async recent(limit) {
      await writeAll();
      const entries: RecentEntry[] = [];
      const iter = kv.list<RecentEntry>({ prefix: [...RECENT] }, { reverse: true, limit });
      for await (const entry of iter) entries.push(entry.value);
      return entries;
    },
    async report() {
      await writeAll();
      const now = clock.now();
      const [all, meta] = await Promise.all([
        allRows(),
        kv.getMany<Deno.KvU64[]>([[...PREFIX, "meta", "first_at"], [...PREFIX, "meta", "last_at"]]),
      ]);
      const windowSections: StatsReport["windows"] = {};
      for (const spec of WINDOWS) {
        const current = Math.floor(now / spec.bucketMs) * spec.bucketMs;
        const from = current - (spec.buckets - 1) * spec.bucketMs;
        const base = [...PREFIX, "w", spec.granularity];
        const rows = await rowsIn({
          start: [...base, from],
          end: [...base, current + spec.bucketMs],
        }, 6);
        windowSections[spec.name] = {
          from: new Date(from).toISOString(),
          to: new Date(now).toISOString(),
          ...section(rows),
        };
      }
      const time = (entry: Deno.KvEntryMaybe<Deno.KvU64>) =>
        entry.value ? new Date(Number(entry.value.value)).toISOString() : null;
      return {
        generated_at: new Date(now).toISOString(),
        first_request_at: time(meta[0]),
        last_request_at: time(meta[1]),
        ...section(all),
        windows: windowSections,
        percentiles: {
          method: "nearest rank, from log-scale histograms (24 buckets per decade)",
          relative_error: round(RELATIVE_ERROR, 4),
        },
        storage: {
          write_failures: writeFailures,
          pending_writes: pendingSums.size + recentQueue.length,
        },
      };
    },
  };
}

async function defaultCommit(kv: Deno.Kv, mutations: Deno.KvMutation[]): Promise<void> {
  const result = await kv.atomic().mutate(...mutations).commit();
  if (!result.ok) throw new Error("KV atomic commit was not applied");
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

function cleanLabel(value: string | null | undefined, fallback: string): string {
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

function toRow(rest: Deno.KvKey, value: unknown): Row | null {
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
  return {
    ...view(rows),
    by_model: groups((labels) => labels.model),
    by_endpoint: groups((labels) => labels.endpoint),
  };
}

/** A recent-log entry for a summary. */
export function recentEntry(summary: RequestSummary): RecentEntry {
  const u = summary.usage;
  return {
    id: summary.id,
    time: new Date(summary.startedAt).toISOString(),
    endpoint: cleanLabel(summary.endpoint, "unknown"),
    model: summary.model === null ? null : cleanLabel(summary.model, "unknown"),
    streaming: summary.streaming,
    outcome: cleanLabel(summary.outcome, "unknown"),
    status: summary.status,
    retries: summary.retries,
    ttft_ms: summary.ttftMs === null ? null : round(summary.ttftMs, 3),
    total_ms: round(summary.totalMs, 3),
    upstream_ttft_ms: summary.upstreamTtftMs === null ? null : round(summary.upstreamTtftMs, 3),
    tokens: {
      input: u.input_tokens,
      output: u.output_tokens,
      cache_creation_input: u.cache_creation_input_tokens,
      cache_read_input: u.cache_read_input_tokens,
    },
    stop_reason: summary.stopReason,
    events: { ...summary.events },
  };
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** The endpoints whose requests are recorded (POST only). */
export const RECORDED_ENDPOINTS = ["/v1/messages", "/v1/chat/completions", "/chat"];

/** What {@link refusalSummary} needs to know about a request sluice answered with an error. */
export interface RefusalInfo {
  method: string;
  path: string;
  status: number;
  /** The error type the client got. */
  errorType: string;
  requestId: string;
  startedAt: number;
  endedAt: number;
  /** The request body, if it was already parsed (never read here). */
  body?: unknown;
}

/**
 * The summary of a request sluice answered itself with an error (bad input, a limit, a failure
 * before any upstream answer), or null when it is not recorded: other paths, and 401/403, so a
 * caller without a valid key cannot write to the stats. Outcome: `invalid_request` for 4xx,
 * `rate_limit_error` for 429, the error type for 5xx.
 */
export function refusalSummary(info: RefusalInfo): RequestSummary | null {
  if (info.method !== "POST" || !RECORDED_ENDPOINTS.includes(info.path)) return null;
  if (info.status < 400 || info.status === 401 || info.status === 403) return null;
  const body = (info.body && typeof info.body === "object" ? info.body : {}) as Record<
    string,
    unknown
  >;
  const outcome = info.status === 429
    ? "rate_limit_error"
    : info.status < 500
    ? "invalid_request"
    : info.errorType;
  return {
    id: info.requestId,
    endpoint: info.path,
    // `/chat` streams unless told not to; `/v1/messages` only when asked to.
    streaming: info.path === "/chat" ? body.stream !== false : body.stream === true,
    model: typeof body.model === "string" ? body.model : null,
    outcome,
    status: info.status,
    retries: 0,
    startedAt: info.startedAt,
    ttftMs: null,
    totalMs: Math.max(0, info.endedAt - info.startedAt),
    upstreamTtftMs: null,
    usage: {
      input_tokens: 0,
      output_tokens: 0,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
    },
    stopReason: null,
    events: {},
  };
}
