import assert from "node:assert/strict";
import {
  bucketEstimateMs,
  bucketIndex,
  BUCKETS_PER_DECADE,
  bucketUpperMs,
  cumulativeCounts,
  emptyHistogram,
  GAMMA,
  MAX_INDEX,
  MAX_MS,
  merge,
  MIN_MS,
  observe,
  OVERFLOW_INDEX,
  quantile,
  RELATIVE_ERROR,
  ZERO_INDEX,
} from "../lib/stats/histogram.ts";
import { seededRandom } from "./helpers.ts";

/** Nearest-rank percentile of samples: the ⌈q·n⌉-th smallest. */
function exactQuantile(samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.max(1, Math.ceil(q * sorted.length)) - 1];
}

/** Log-uniform samples between `lo` and `hi` ms. */
function logUniform(random: () => number, n: number, lo: number, hi: number): number[] {
  const a = Math.log(lo), b = Math.log(hi);
  return Array.from({ length: n }, () => Math.exp(a + (b - a) * random()));
}

const TOLERANCE = RELATIVE_ERROR + 1e-12;

Deno.test("the stated relative error is (γ-1)/(γ+1) for 24 buckets per decade, under 5%", () => {
  assert.equal(GAMMA, Math.pow(10, 1 / BUCKETS_PER_DECADE));
  assert.equal(RELATIVE_ERROR, (GAMMA - 1) / (GAMMA + 1));
  assert.ok(RELATIVE_ERROR < 0.05);
});

Deno.test("bucket edges grow by γ and land exactly on powers of ten", () => {
  for (let k = 1; k <= MAX_INDEX; k++) {
    const ratio = bucketUpperMs(k) / bucketUpperMs(k - 1);
    assert.ok(Math.abs(ratio - GAMMA) < 1e-9, `edge ${k}`);
  }
  for (let decade = -3; decade <= 7; decade++) {
    const k = (decade + 3) * BUCKETS_PER_DECADE;
    assert.equal(bucketUpperMs(k), Math.pow(10, decade));
    // A value exactly on a power of ten belongs to the bucket it closes.
    assert.equal(bucketIndex(Math.pow(10, decade)), k);
  }
  assert.equal(bucketUpperMs(MAX_INDEX), MAX_MS);
});

Deno.test("each value falls in the bucket whose edges enclose it", () => {
  const random = seededRandom(7);
  for (const v of logUniform(random, 5000, MIN_MS * 1.0001, MAX_MS)) {
    const k = bucketIndex(v);
    assert.ok(v <= bucketUpperMs(k) * (1 + 1e-12), `${v} above bucket ${k}`);
    assert.ok(v > bucketUpperMs(k - 1) * (1 - 1e-12), `${v} below bucket ${k}`);
  }
});

Deno.test("every value is within the stated relative error of its bucket's estimate", () => {
  const random = seededRandom(11);
  let worst = 0;
  for (const v of logUniform(random, 20000, MIN_MS * 1.0001, MAX_MS)) {
    const error = Math.abs(bucketEstimateMs(bucketIndex(v)) - v) / v;
    worst = Math.max(worst, error);
    assert.ok(error <= TOLERANCE, `${v}: error ${error}`);
  }
  // The bound is tight: values near the bucket edges come close to it.
  assert.ok(worst > RELATIVE_ERROR * 0.95, `worst error ${worst}`);
});

Deno.test("percentiles of known samples are within the stated error of the exact ones", async (t) => {
  const random = seededRandom(2024);
  const sets: Record<string, number[]> = {
    "streaming-like TTFT (300-900 ms)": logUniform(random, 997, 300, 900),
    "non-streaming-like totals (2-60 s)": logUniform(random, 1000, 2000, 60000),
    "bimodal (fast cache hits and slow answers)": [
      ...logUniform(random, 300, 0.5, 3),
      ...logUniform(random, 700, 800, 20000),
    ],
    "a single sample": [412.5],
    "all equal": Array(50).fill(250),
    "uniform 1 µs to 10 s": Array.from({ length: 3001 }, () => 0.001 + random() * 10000),
  };
  for (const [name, samples] of Object.entries(sets)) {
    await t.step(name, () => {
      const histogram = emptyHistogram();
      for (const v of samples) observe(histogram, v);
      assert.equal(histogram.count, samples.length);
      for (const q of [0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1]) {
        const exact = exactQuantile(samples, q);
        const estimate = quantile(histogram, q)!;
        const error = Math.abs(estimate - exact) / exact;
        assert.ok(error <= TOLERANCE, `q=${q}: ${estimate} vs exact ${exact} (${error})`);
      }
      const sum = samples.reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(histogram.sumMs - sum) <= 1e-9 * sum, "the sum (hence the mean) is exact");
    });
  }
});

Deno.test("merging by adding bucket counts gives exactly the histogram of all values", () => {
  const random = seededRandom(99);
  const samples = logUniform(random, 2000, 0.01, 100000);
  const whole = emptyHistogram();
  for (const v of samples) observe(whole, v);
  const parts = [emptyHistogram(), emptyHistogram(), emptyHistogram()];
  samples.forEach((v, i) => observe(parts[i % 3], v));
  const merged = parts.reduce((into, part) => merge(into, part), emptyHistogram());
  assert.deepEqual(
    [...merged.buckets].sort((a, b) => a[0] - b[0]),
    [...whole.buckets].sort((a, b) => a[0] - b[0]),
  );
  assert.equal(merged.count, whole.count);
  assert.ok(Math.abs(merged.sumMs - whole.sumMs) < 1e-6);
  for (const q of [0.5, 0.9, 0.99]) assert.equal(quantile(merged, q), quantile(whole, q));
});

Deno.test("zero, tiny and huge values go to their own buckets", () => {
  assert.equal(bucketIndex(0), ZERO_INDEX);
  assert.equal(bucketIndex(-5), ZERO_INDEX);
  assert.equal(bucketIndex(Number.NaN), ZERO_INDEX);
  assert.equal(bucketEstimateMs(ZERO_INDEX), 0);
  assert.equal(bucketIndex(MIN_MS / 10), 0);
  assert.ok(Math.abs(bucketEstimateMs(0) - MIN_MS / 10) < MIN_MS, "absolute error under 1 µs");
  assert.equal(bucketIndex(MAX_MS * 2), OVERFLOW_INDEX);
  assert.equal(bucketUpperMs(OVERFLOW_INDEX), Infinity);
  const histogram = emptyHistogram();
  for (let i = 0; i < 3; i++) observe(histogram, 0);
  assert.equal(quantile(histogram, 0.5), 0, "a clock that did not move reports 0, not 1 µs");
});

Deno.test("an empty histogram has no percentiles", () => {
  assert.equal(quantile(emptyHistogram(), 0.5), null);
});

Deno.test("cumulative counts at bucket edges count exactly the values at or below them", () => {
  const random = seededRandom(5);
  const samples = logUniform(random, 1500, 0.5, 200000);
  const histogram = emptyHistogram();
  for (const v of samples) observe(histogram, v);
  const edges = [72, 80, 96, 120, 144, 168, 192];
  const counts = cumulativeCounts(histogram, edges);
  edges.forEach((edge, i) => {
    assert.equal(counts[i], samples.filter((v) => v <= bucketUpperMs(edge)).length, `edge ${edge}`);
  });
});
