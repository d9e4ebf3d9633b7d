/**
 * Latency histograms with fixed log-scale buckets: every process, isolate and time bucket uses
 * the same boundaries, so histograms merge exactly by adding bucket counts (in memory, or in Deno
 * KV with atomic `sum`), and percentiles come out with a known relative error.
 *
 * Buckets (values in milliseconds):
 * - index `-1`: values ≤ 0 (a clock that did not move);
 * - index `0`: (0, 1 µs];
 * - index `k` in 1…{@link MAX_INDEX}: (B(k-1), B(k)] with B(k) = 0.001 ms · 10^(k/24), i.e.
 *   24 buckets per decade, from 1 µs to 10⁷ ms (about 2.8 hours);
 * - index `MAX_INDEX + 1`: everything above.
 *
 * A percentile is reported as `2·B(k)/(1+γ)` for the bucket `k` that holds it (γ = 10^(1/24)):
 * that point is within {@link RELATIVE_ERROR} (about 4.8%) of every value in the bucket, so the
 * estimate is within that relative error of the exact (nearest-rank) percentile of the samples.
 *
 * Written by hand rather than with a sketch library (DDSketch and friends) because the buckets
 * must be plain numbered KV keys that many isolates add into with atomic `sum`, and their edges
 * must line up with the Prometheus `le` boundaries sluice exports; that is ~80 lines.
 */

/** Buckets per decade. */
export const BUCKETS_PER_DECADE = 24;
/** The bucket growth factor γ = 10^(1/24). */
export const GAMMA = Math.pow(10, 1 / BUCKETS_PER_DECADE);
/** The upper edge of bucket 0, in ms (1 µs). */
export const MIN_MS = 0.001;
/** The last regular bucket: its upper edge is 10⁷ ms. */
export const MAX_INDEX = 10 * BUCKETS_PER_DECADE;
/** The upper edge of the last regular bucket, in ms. */
export const MAX_MS = MIN_MS * Math.pow(10, MAX_INDEX / BUCKETS_PER_DECADE);
/** Index of the bucket for values ≤ 0. */
export const ZERO_INDEX = -1;
/** Index of the overflow bucket (values above {@link MAX_MS}). */
export const OVERFLOW_INDEX = MAX_INDEX + 1;
/**
 * The largest relative error of a percentile estimate, (γ-1)/(γ+1) ≈ 0.0479, for values between
 * 1 µs and 10⁷ ms. Below 1 µs the absolute error is under 1 µs; above 10⁷ ms, 10⁷ ms is reported.
 */
export const RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1);

/** The bucket a value (ms) falls in. */
export function bucketIndex(valueMs: number): number {
  if (!(valueMs > 0)) return ZERO_INDEX; // also NaN: never a reason to lose a count
  if (valueMs <= MIN_MS) return 0;
  if (valueMs > MAX_MS) return OVERFLOW_INDEX;
  // log10(v) + 3 rather than log10(v / MIN_MS): no division, so powers of ten land exactly.
  const k = Math.ceil((Math.log10(valueMs) + 3) * BUCKETS_PER_DECADE);
  // Floating point may put a value sitting exactly on an edge one bucket off; the estimate
  // is then still within the stated error (the value is at that bucket's edge too).
  return Math.min(MAX_INDEX, Math.max(1, k));
}

/** The upper edge (inclusive) of bucket `index`, in ms. Powers of ten are exact. */
export function bucketUpperMs(index: number): number {
  if (index <= ZERO_INDEX) return 0;
  if (index >= OVERFLOW_INDEX) return Infinity;
  const decades = index / BUCKETS_PER_DECADE - 3; // MIN_MS is 10^-3
  return Number.isInteger(decades) ? Number(`1e${decades}`) : Math.pow(10, decades);
}

/** The value reported for a percentile that falls in bucket `index`, in ms. */
export function bucketEstimateMs(index: number): number {
  if (index <= ZERO_INDEX) return 0;
  if (index === 0) return MIN_MS / 2;
  if (index >= OVERFLOW_INDEX) return MAX_MS;
  return (2 * bucketUpperMs(index)) / (1 + GAMMA);
}

/** A histogram: counts by bucket index, plus the exact count and sum. */
export interface Histogram {
  /** Count of values per bucket index (absent = 0). */
  buckets: Map<number, number>;
  count: number;
  /** Sum of the values, in ms. */
  sumMs: number;
}

/** An empty histogram. */
export function emptyHistogram(): Histogram {
  return { buckets: new Map(), count: 0, sumMs: 0 };
}

/** Adds one value (ms). */
export function observe(histogram: Histogram, valueMs: number): void {
  const index = bucketIndex(valueMs);
  histogram.buckets.set(index, (histogram.buckets.get(index) ?? 0) + 1);
  histogram.count += 1;
  histogram.sumMs += Math.max(0, valueMs) || 0;
}

/** Adds `from` into `into`: exact, because every histogram has the same buckets. */
export function merge(into: Histogram, from: Histogram): Histogram {
  for (const [index, n] of from.buckets) {
    into.buckets.set(index, (into.buckets.get(index) ?? 0) + n);
  }
  into.count += from.count;
  into.sumMs += from.sumMs;
  return into;
}

/**
 * The `q`-quantile (0 < q ≤ 1), nearest-rank: the estimate for the bucket holding the
 * ⌈q·n⌉-th smallest value; within {@link RELATIVE_ERROR} of it. Null when empty.
 */
export function quantile(histogram: Histogram, q: number): number | null {
  const n = [...histogram.buckets.values()].reduce((a, b) => a + b, 0);
  if (n === 0) return null;
  const rank = Math.max(1, Math.ceil(q * n));
  let seen = 0;
  for (const index of [...histogram.buckets.keys()].sort((a, b) => a - b)) {
    seen += histogram.buckets.get(index)!;
    if (seen >= rank) return bucketEstimateMs(index);
  }
  return bucketEstimateMs(OVERFLOW_INDEX);
}

/**
 * Cumulative counts at bucket edges: for each index, the count of values ≤ that bucket's upper
 * edge (Prometheus `le` buckets; exact, since the edges are bucket edges).
 */
export function cumulativeCounts(histogram: Histogram, edgeIndexes: number[]): number[] {
  const sorted = [...histogram.buckets.entries()].sort((a, b) => a[0] - b[0]);
  return edgeIndexes.map((edge) =>
    sorted.reduce((sum, [index, n]) => (index <= edge ? sum + n : sum), 0)
  );
}
