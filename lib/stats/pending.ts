/**
 * What one instance has recorded but not yet written: counters added up in memory, so that many
 * requests become one atomic KV write of merged mutations (see lib/stats/kv_stats.ts).
 */
import type { Series, WindowSpec } from "./kv_layout.ts";
import {
  allKey,
  contributions,
  FIRST_AT_KEY,
  keyCounterKey,
  labelsOf,
  LAST_AT_KEY,
  picoUsdOf,
  recentKey,
  seriesOf,
  windowKey,
  WINDOWS,
} from "./kv_layout.ts";
import type { RecentEntry } from "./recent.ts";
import { recentEntry } from "./recent.ts";
import type { RequestSummary } from "./request_summary.ts";

/** One mutation of a write, and how to put its change back in memory if the write fails. */
export interface BatchItem {
  mutation: Deno.KvMutation;
  undo(): void;
}

/** Options for {@link PendingStats}. */
export interface PendingStatsOptions {
  /** Distinguishes this process's window and recent-log keys. */
  instance: string;
  /** Recent-log entries this instance keeps (older ones are deleted). */
  recentLimit: number;
  /** How long a recent-log entry lives, in ms. */
  recentTtlMs: number;
}

interface WindowState {
  spec: WindowSpec;
  bucketStart: number;
  totals: Map<string, { key: Deno.KvKey; value: number }>;
  dirty: Set<string>;
}

/** The unwritten records of one instance. */
export class PendingStats {
  readonly #options: PendingStatsOptions;
  readonly #sums = new Map<string, { key: Deno.KvKey; value: bigint }>();
  readonly #windows = new Map<string, WindowState>();
  #recentQueue: { key: Deno.KvKey; value: RecentEntry }[] = [];
  readonly #ownRecent: Deno.KvKey[] = [];
  #recentDeletes: Deno.KvKey[] = [];
  #firstAt: number | null = null;
  #lastAt: number | null = null;
  #seq = 0;

  constructor(options: PendingStatsOptions) {
    this.#options = options;
  }

  /** Counters and log entries not yet handed to a write. */
  get size(): number {
    return this.#sums.size + this.#recentQueue.length;
  }

  /** Adds what `summary` contributes to every counter, window and the recent log. */
  add(summary: RequestSummary): void {
    const series = seriesOf(labelsOf(summary));
    const parts = contributions(summary);
    const seriesId = JSON.stringify(series);
    const ids = parts.map(([metric]) => JSON.stringify(metric) + seriesId);
    parts.forEach(([metric, value], i) =>
      this.#addSum(ids[i], () => allKey(series, metric), value)
    );
    const endedAt = summary.startedAt + Math.max(0, summary.totalMs);
    for (const spec of WINDOWS) this.#addToWindow(spec, endedAt, series, parts, ids);
    this.#firstAt = Math.min(this.#firstAt ?? summary.startedAt, summary.startedAt);
    this.#lastAt = Math.max(this.#lastAt ?? endedAt, endedAt);
    this.#addRecent(summary);
    if (summary.keyId) {
      const labels = labelsOf(summary);
      const keyId = cleanKeyId(summary.keyId);
      const id = `key:${keyId}:${labels.model}`;
      this.#addSum(id + ":r", () => keyCounterKey(keyId, labels.model, "requests"), 1n);
      const pico = picoUsdOf(summary);
      this.#addSum(id + ":c", () => keyCounterKey(keyId, labels.model, "cost"), pico);
    }
  }

  /** Everything pending as KV mutations, emptying memory; `undo` puts an item back. */
  take(now: number): BatchItem[] {
    const items: BatchItem[] = [];
    for (const [id, { key, value }] of this.#sums) {
      items.push({
        mutation: { type: "sum", key, value: new Deno.KvU64(value) },
        undo: () => this.#addSum(id, () => key, value),
      });
    }
    this.#sums.clear();
    this.#takeWindows(now, items);
    this.#takeTimes(items);
    const ttl = this.#options.recentTtlMs;
    for (const entry of this.#recentQueue) {
      items.push({
        mutation: { type: "set", key: entry.key, value: entry.value, expireIn: ttl },
        undo: () => this.#recentQueue.unshift(entry),
      });
    }
    this.#recentQueue = [];
    for (const key of this.#recentDeletes) {
      items.push({ mutation: { type: "delete", key }, undo: () => this.#recentDeletes.push(key) });
    }
    this.#recentDeletes = [];
    return items;
  }

  // `id` names the key in memory; the key itself is built only the first time (this runs for
  // every request, on the thread that serves streams).
  #addSum(id: string, key: () => Deno.KvKey, value: bigint): void {
    if (value <= 0n) return;
    const entry = this.#sums.get(id);
    if (entry) entry.value += value;
    else this.#sums.set(id, { key: key(), value });
  }

  #addToWindow(
    spec: WindowSpec,
    endedAt: number,
    series: Series,
    parts: [Deno.KvKeyPart[], bigint][],
    ids: string[],
  ): void {
    const bucketStart = Math.floor(endedAt / spec.bucketMs) * spec.bucketMs;
    const id = `${spec.granularity}:${bucketStart}`;
    let state = this.#windows.get(id);
    if (!state) {
      state = { spec, bucketStart, totals: new Map(), dirty: new Set() };
      this.#windows.set(id, state);
    }
    for (let i = 0; i < parts.length; i++) {
      const [metric, value] = parts[i];
      const total = state.totals.get(ids[i]);
      if (total) total.value += Number(value);
      else {
        const key = windowKey(
          spec.granularity,
          bucketStart,
          this.#options.instance,
          series,
          metric,
        );
        state.totals.set(ids[i], { key, value: Number(value) });
      }
      state.dirty.add(ids[i]);
    }
  }

  #addRecent(summary: RequestSummary): void {
    const key = recentKey(summary.startedAt, this.#options.instance, ++this.#seq);
    this.#recentQueue.push({ key, value: recentEntry(summary) });
    this.#ownRecent.push(key);
    if (this.#ownRecent.length > this.#options.recentLimit) {
      // The queue holds the newest of `ownRecent`, not yet written. When the oldest entry is
      // still among them it is dropped unwritten; otherwise it is in KV and gets deleted. (With
      // a write interval, a busy second records more than the limit: no set-then-delete.)
      const oldest = this.#ownRecent.shift()!;
      if (this.#recentQueue.length > this.#ownRecent.length) this.#recentQueue.shift();
      else this.#recentDeletes.push(oldest);
    }
  }

  // KV's `sum` cannot expire, so a window's buckets are this instance's running totals, `set`
  // with an expiry; a bucket past its window is let go.
  #takeWindows(now: number, items: BatchItem[]): void {
    for (const [id, state] of this.#windows) {
      const expireAt = state.bucketStart + (state.spec.buckets + 1) * state.spec.bucketMs;
      if (expireAt <= now) {
        this.#windows.delete(id);
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
  }

  #takeTimes(items: BatchItem[]): void {
    if (this.#firstAt === null || this.#lastAt === null) return;
    const first = BigInt(Math.max(0, Math.floor(this.#firstAt)));
    const last = BigInt(Math.max(0, Math.floor(this.#lastAt)));
    items.push({
      mutation: { type: "min", key: FIRST_AT_KEY, value: new Deno.KvU64(first) },
      undo: () => (this.#firstAt = Math.min(this.#firstAt ?? Number(first), Number(first))),
    });
    items.push({
      mutation: { type: "max", key: LAST_AT_KEY, value: new Deno.KvU64(last) },
      undo: () => (this.#lastAt = Math.max(this.#lastAt ?? Number(last), Number(last))),
    });
    this.#firstAt = this.#lastAt = null;
  }
}

/** Key ids are short hex hashes (or `anonymous`); anything else is grouped as `other`. */
function cleanKeyId(keyId: string): string {
  return /^[\w-]{1,64}$/.test(keyId) ? keyId : "other";
}
