/**
 * Stats that survive: a Deno KV sink for finished requests and the reader behind `GET /stats`,
 * `GET /stats/recent` and `GET /metrics` (the key layout is in lib/stats/kv_layout.ts).
 *
 * Writing never touches the response path: `record` only adds to memory and schedules a commit.
 * Commits are serialized per instance, at most one per `writeIntervalMs`; records that arrive
 * meanwhile are batched into the next one. A failed commit is logged and counted, and its changes
 * are kept for the next attempt.
 */
import { boundLabels, modelLabeller } from "./labels.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { RELATIVE_ERROR } from "./histogram.ts";
import type { Row } from "./kv_layout.ts";
import {
  ALL_SELECTOR,
  decodeRow,
  FIRST_AT_KEY,
  KEY_COUNTERS_PREFIX,
  LAST_AT_KEY,
  RECENT_PREFIX,
  WINDOWS,
  windowSelector,
} from "./kv_layout.ts";
import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import { PendingStats } from "./pending.ts";
import type { RecentEntry } from "./recent.ts";
import type { StatsReport } from "./report.ts";
import { round, section } from "./report.ts";
import { PICO_PER_USD, roundUsd } from "./cost.ts";
import type { RequestSummary, StatsSink } from "./request_summary.ts";

/** Deno KV accepts up to 1000 mutations per atomic operation; stay well under it. */
const MAX_MUTATIONS = 500;

/** What the stats routes read. */
export interface StatsSource {
  report(): Promise<StatsReport>;
  recent(limit: number): Promise<RecentEntry[]>;
  /** All-time rows (for `/metrics`). */
  rows(): Promise<Row[]>;
  /** All-time requests and cost of one gateway key id, by model. */
  keyTotals(keyId: string): Promise<KeyTotals>;
  /** Failed writes of this instance since it started. */
  readonly writeFailures: number;
}

/** A gateway key's all-time figures (`GET /stats/keys/{id}`). */
export interface KeyTotals {
  requests: number;
  cost_usd: number;
  by_model: Record<string, { requests: number; cost_usd: number }>;
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
  /**
   * Models labelled by name besides the SDK's (see labels.ts); any other model is `other`, so
   * callers cannot grow the store with made-up names. `main.ts` passes `SLUICE_DEFAULT_MODEL`.
   */
  knownModels?: readonly string[];
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

/**
 * Creates the KV-backed stats sink.
 *
 * @example One request recorded and read back
 * ```ts
 * import assert from "node:assert/strict";
 * import { createKvStats } from "./kv_stats.ts";
 *
 * const kv = await Deno.openKv(":memory:");
 * const stats = createKvStats({ kv });
 * await stats.record({
 *   id: "req_1", endpoint: "/v1/messages", streaming: true, model: "claude-sonnet-5-5",
 *   outcome: "ok", status: 200, retries: 0, startedAt: Date.now(), ttftMs: 310, totalMs: 900,
 *   upstreamTtftMs: 305, stopReason: "end_turn", events: {},
 *   usage: {
 *     input_tokens: 12, output_tokens: 40,
 *     cache_creation_input_tokens: 0, cache_read_input_tokens: 0,
 *   },
 * });
 * const report = await stats.report();
 * assert.equal(report.requests.streaming, 1);
 * assert.equal(report.tokens.output, 40);
 * kv.close();
 * ```
 */
export function createKvStats(options: KvStatsOptions): KvStats {
  const sink: SinkState = {
    modelLabel: modelLabeller(options.knownModels),
    kv: options.kv,
    clock: options.clock ?? systemClock,
    logger: options.logger ?? silentLogger,
    commit: options.commit ?? defaultCommit,
    writeIntervalMs: options.writeIntervalMs ?? 0,
    pending: new PendingStats({
      instance: options.instanceId ?? crypto.randomUUID(),
      recentLimit: options.recentLimit ?? 200,
      recentTtlMs: Math.ceil(options.recentTtlMs ?? 24 * 60 * 60_000),
    }),
    writeFailures: 0,
    inflight: null,
    waitTimer: undefined,
  };
  const kv = sink.kv;
  return {
    get writeFailures() {
      return sink.writeFailures;
    },
    record(summary) {
      return Promise.resolve(record(sink, summary));
    },
    defer(work) {
      // One macrotask later, so a response's last bytes reach the socket before the recording
      // runs (the gateway bench measured the last delta ~1 ms later without it). A timer here,
      // not in the app, so that apps without a KV sink (and their tests) start no timer at all.
      return new Promise<void>((resolve) => setTimeout(resolve, 0)).then(work);
    },
    async flush() {
      // Summaries travel through already-resolved promise chains before `record` sees them; one
      // macrotask lets every such chain run first. Then wait for the writes.
      await new Promise<void>((resolve) => setTimeout(resolve, 0));
      await writeAll(sink);
    },
    async rows() {
      await writeAll(sink);
      return await rowsIn(kv, ALL_SELECTOR);
    },
    async keyTotals(keyId) {
      await writeAll(sink);
      const totals = await readKeyCounters(kv, [...KEY_COUNTERS_PREFIX, keyId]);
      return totals.get(keyId) ?? { requests: 0, cost_usd: 0, by_model: {} };
    },
    async recent(limit) {
      await writeAll(sink);
      const entries: RecentEntry[] = [];
      const iter = kv.list<RecentEntry>({ prefix: RECENT_PREFIX }, { reverse: true, limit });
      for await (const entry of iter) entries.push(entry.value);
      return entries;
    },
    async report() {
      await writeAll(sink);
      return await readReport(kv, sink.clock.now(), {
        write_failures: sink.writeFailures,
        pending_writes: sink.pending.size,
      });
    },
  };
}

/** What one KV sink keeps: its settings, the records not yet written and its write. */
interface SinkState {
  modelLabel: ReturnType<typeof modelLabeller>;
  kv: Deno.Kv;
  clock: Clock;
  logger: Logger;
  commit: (kv: Deno.Kv, mutations: Deno.KvMutation[]) => Promise<void>;
  writeIntervalMs: number;
  pending: PendingStats;
  writeFailures: number;
  inflight: Promise<void> | null;
  // The timer of the next write when `writeIntervalMs` > 0.
  waitTimer: ReturnType<typeof setTimeout> | undefined;
}

/** {@link KvStats.record}: in memory at once (the recorder defers it, see `defer`). */
function record(sink: SinkState, summary: RequestSummary): void {
  try {
    sink.pending.add(boundLabels(summary, sink.modelLabel));
  } catch (error) {
    sink.writeFailures++;
    sink.logger.warn("stats record failed", { error: String(error) });
    return;
  }
  // Not awaited: the write goes out with the others of its interval; `flush` waits for it.
  schedule(sink);
}

async function drain(sink: SinkState) {
  while (true) {
    const items = sink.pending.take(sink.clock.now());
    if (items.length === 0) return;
    for (let i = 0; i < items.length; i += MAX_MUTATIONS) {
      const chunk = items.slice(i, i + MAX_MUTATIONS);
      try {
        await sink.commit(sink.kv, chunk.map((item) => item.mutation));
      } catch (error) {
        sink.writeFailures++;
        sink.logger.warn("stats write failed; kept for the next attempt", { error: String(error) });
        for (const item of items.slice(i)) item.undo();
        return; // try again with the next record or flush, not in a tight loop
      }
    }
  }
}

function writeNow(sink: SinkState): Promise<void> {
  // Nobody awaits a scheduled write: whatever goes wrong is counted and logged, never thrown.
  sink.inflight ??= drain(sink).catch((error) => {
    sink.writeFailures++;
    sink.logger.warn("stats write failed", { error: String(error) });
  }).finally(() => (sink.inflight = null));
  return sink.inflight;
}

/**
 * A write for what was just recorded: right away, or with every record of the next
 * `writeIntervalMs`. Batching by time is what keeps stats cheap under load: one commit of a few
 * dozen merged mutations a second instead of one per request (the gateway bench measured the
 * per-request commits delaying other streams' deltas; see docs/performance.md).
 */
function schedule(sink: SinkState): void {
  if (sink.writeIntervalMs <= 0) writeNow(sink);
  else sink.waitTimer ??= setTimeout(() => writeWaiting(sink), sink.writeIntervalMs);
}

/** Starts the write that was waiting for its interval now. */
function writeWaiting(sink: SinkState): Promise<void> {
  if (sink.waitTimer !== undefined) clearTimeout(sink.waitTimer);
  sink.waitTimer = undefined;
  return writeNow(sink);
}

/** Writes whatever is waiting and resolves when every write so far is over. */
async function writeAll(sink: SinkState): Promise<void> {
  while (sink.inflight) await sink.inflight;
  await writeWaiting(sink);
}

async function defaultCommit(kv: Deno.Kv, mutations: Deno.KvMutation[]): Promise<void> {
  const result = await kv.atomic().mutate(...mutations).commit();
  if (!result.ok) throw new Error("KV atomic commit was not applied");
}

async function rowsIn(
  kv: Deno.Kv,
  where: { selector: Deno.KvListSelector; skip: number },
): Promise<Row[]> {
  const rows: Row[] = [];
  for await (const entry of kv.list(where.selector)) {
    const row = decodeRow(entry.key.slice(where.skip), entry.value);
    if (row) rows.push(row);
  }
  return rows;
}

/** The body of `GET /stats` as KV holds it at `now`. */
async function readReport(
  kv: Deno.Kv,
  now: number,
  storage: StatsReport["storage"],
): Promise<StatsReport> {
  const [all, meta, keys] = await Promise.all([
    rowsIn(kv, ALL_SELECTOR),
    kv.getMany<Deno.KvU64[]>([FIRST_AT_KEY, LAST_AT_KEY]),
    readKeyCounters(kv, KEY_COUNTERS_PREFIX),
  ]);
  const windows: StatsReport["windows"] = {};
  for (const spec of WINDOWS) {
    const current = Math.floor(now / spec.bucketMs) * spec.bucketMs;
    const from = current - (spec.buckets - 1) * spec.bucketMs;
    const rows = await rowsIn(kv, windowSelector(spec.granularity, from, current + spec.bucketMs));
    windows[spec.name] = {
      from: new Date(from).toISOString(),
      to: new Date(now).toISOString(),
      ...section(rows),
    };
  }
  const time = (entry: Deno.KvEntryMaybe<Deno.KvU64>) =>
    entry.value ? new Date(Number(entry.value.value)).toISOString() : null;
  const whole = section(all);
  const byKey = Object.fromEntries(
    [...keys].sort(([a], [b]) => a.localeCompare(b)).map(([id, totals]) => [id, totals.cost_usd]),
  );
  return {
    generated_at: new Date(now).toISOString(),
    first_request_at: time(meta[0]),
    last_request_at: time(meta[1]),
    ...whole,
    cost_usd: { ...whole.cost_usd, by_key: byKey },
    windows,
    percentiles: {
      method: "nearest rank, from log-scale histograms (24 buckets per decade)",
      relative_error: round(RELATIVE_ERROR, 4),
    },
    storage,
  };
}

/** The per-key counters under `prefix`, by key id. */
async function readKeyCounters(kv: Deno.Kv, prefix: Deno.KvKey): Promise<Map<string, KeyTotals>> {
  const picos = new Map<string, Map<string, { requests: number; pico: number }>>();
  for await (const entry of kv.list({ prefix })) {
    const [keyId, model, metric] = entry.key.slice(KEY_COUNTERS_PREFIX.length).map(String);
    const n = entry.value instanceof Deno.KvU64 ? Number(entry.value.value) : 0;
    const models = picos.get(keyId) ?? new Map();
    picos.set(keyId, models);
    const figures = models.get(model) ?? { requests: 0, pico: 0 };
    models.set(model, figures);
    if (metric === "requests") figures.requests += n;
    else if (metric === "cost") figures.pico += n;
  }
  const out = new Map<string, KeyTotals>();
  for (const [keyId, models] of picos) {
    let requests = 0, pico = 0;
    const byModel: KeyTotals["by_model"] = {};
    for (const [model, figures] of [...models].sort(([a], [b]) => a.localeCompare(b))) {
      requests += figures.requests;
      pico += figures.pico;
      byModel[model] = {
        requests: figures.requests,
        cost_usd: roundUsd(figures.pico / PICO_PER_USD),
      };
    }
    out.set(keyId, { requests, cost_usd: roundUsd(pico / PICO_PER_USD), by_model: byModel });
  }
  return out;
}
