/**
 * Accumulator throughput (`deno bench tests/accumulator_bench.ts`, or `deno task bench` for the
 * table with events/s, MB/s and ratios).
 *
 * Every group runs the same bytes through: sluice (decoder + accumulator), sluice behind
 * `tapStream` (as the gateway runs it), the official SDK's `MessageStream`, and the floor
 * (`eventsource-parser` + `JSON.parse` of each event). The `scaling` group runs sluice on a short
 * and a very long stream so the cost per event can be compared.
 */
import assert from "node:assert/strict";
import {
  type BenchStream,
  runFloor,
  runSdk,
  runSluice,
  runSluiceTapped,
  textStream,
  toolStream,
} from "./bench_support.ts";

const text = textStream(10_000);
const tool = toolStream(5_000);
const short = textStream(100);
const long = textStream(100_000);

// Benchmarking the wrong thing is worse than not benchmarking: check once that sluice and the SDK
// build the same message from these bytes before timing them.
for (const stream of [text, tool, short]) {
  const ours = JSON.parse(JSON.stringify(runSluice(stream.chunks).message));
  const sdk = JSON.parse(JSON.stringify(await runSdk(stream.chunks)));
  delete sdk.parsed_output;
  assert.deepEqual(ours, sdk, `${stream.name}: sluice and the SDK disagree`);
  assert.equal(runFloor(stream.chunks), stream.events);
}

/** Iteration counts keep slow variants (the SDK on big streams) to a few seconds. */
function group(stream: BenchStream, key: string, n?: number) {
  const options = { group: key, n, warmup: n === undefined ? undefined : 2 };
  Deno.bench({
    name: `${key}: floor (eventsource-parser + JSON.parse)`,
    baseline: true,
    ...options,
  }, () => {
    runFloor(stream.chunks);
  });
  Deno.bench({ name: `${key}: sluice (decoder + accumulator)`, ...options }, () => {
    runSluice(stream.chunks);
  });
  Deno.bench({ name: `${key}: sluice via tapStream`, ...options }, async () => {
    await runSluiceTapped(stream.chunks);
  });
  Deno.bench({ name: `${key}: SDK MessageStream`, ...options }, async () => {
    await runSdk(stream.chunks);
  });
}

group(text, "text");
group(tool, "tool");

Deno.bench({ name: "scaling: sluice, 100 deltas", group: "scaling", baseline: true }, () => {
  runSluice(short.chunks);
});
Deno.bench({ name: "scaling: sluice, 100k deltas", group: "scaling", n: 20, warmup: 2 }, () => {
  runSluice(long.chunks);
});

/** What each bench consumed, so `deno task bench` can turn times into events/s and MB/s. */
export const BENCH_STREAMS: Record<string, BenchStream> = {
  text,
  tool,
  "scaling: sluice, 100 deltas": short,
  "scaling: sluice, 100k deltas": long,
};
