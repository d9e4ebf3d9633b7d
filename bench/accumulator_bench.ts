/**
 * Accumulator throughput (`deno bench bench/accumulator_bench.ts`, or `deno task bench` for the
 * table with events/s, MB/s and ratios).
 *
 * Every group runs the same bytes through: the floor (`eventsource-parser` + `JSON.parse` of each
 * event, nothing else), sluice (decoder + accumulator), sluice behind `tapStream` (as the gateway
 * runs it, reading a stream), and the official SDK's `MessageStream` (which reads a stream too).
 *
 * The `scaling` group compares the cost per event of 1,000 100-delta streams run one after
 * another, the same whose results are all kept (as much accumulated text as the long stream
 * keeps, so the garbage collector has the same live data to carry), and one 100,000-delta stream.
 */
import assert from "node:assert/strict";
import {
  accumulatorStreams,
  type BenchStream,
  runFloor,
  runSdk,
  runSluice,
  runSluiceTapped,
  textStream,
} from "./streams.ts";

const streams = accumulatorStreams();

// Benchmarking the wrong thing is worse than not benchmarking: check once that sluice and the SDK
// build the same message from these bytes before timing them.
for (const stream of [streams.text, streams.tool, streams.short]) {
  const ours = JSON.parse(JSON.stringify(runSluice(stream.chunks).message));
  const sdk = JSON.parse(JSON.stringify(await runSdk(stream.chunks)));
  delete sdk.parsed_output;
  assert.deepEqual(ours, sdk, `${stream.name}: sluice and the SDK disagree`);
  assert.equal(runFloor(stream.chunks), stream.events);
}

function group(stream: BenchStream, key: string) {
  Deno.bench({
    name: `${key}: floor (eventsource-parser + JSON.parse)`,
    group: key,
    baseline: true,
  }, () => {
    runFloor(stream.chunks);
  });
  Deno.bench({ name: `${key}: sluice (decoder + accumulator)`, group: key }, () => {
    runSluice(stream.chunks);
  });
  Deno.bench({ name: `${key}: sluice via tapStream`, group: key }, async () => {
    await runSluiceTapped(stream.chunks);
  });
  Deno.bench({ name: `${key}: SDK MessageStream`, group: key }, async () => {
    await runSdk(stream.chunks);
  });
}

group(streams.text, "text");
group(streams.tool, "tool");

// 1,000 short streams, each in its own buffers as real streams are: timing one 100-delta stream
// over and over reads the same few kilobytes from a warm cache and times ~70 µs per iteration,
// which made short streams look 5-10% cheaper per event than they are.
const shortStreams = Array.from({ length: 1000 }, () => textStream(100));

Deno.bench({
  name: "scaling: sluice, 1,000 streams of 100 deltas, one after another",
  group: "scaling",
  baseline: true,
  n: 20,
  warmup: 2,
}, () => {
  for (const stream of shortStreams) runSluice(stream.chunks);
});
Deno.bench({
  name: "scaling: sluice, 1,000 streams of 100 deltas, all kept",
  group: "scaling",
  n: 20,
  warmup: 2,
}, () => {
  const kept = [];
  for (const stream of shortStreams) kept.push(runSluice(stream.chunks));
  assert.equal(kept.length, 1000);
});
Deno.bench(
  { name: "scaling: sluice, 1 stream of 100k deltas", group: "scaling", n: 20, warmup: 2 },
  () => {
    runSluice(streams.long.chunks);
  },
);
Deno.bench(
  { name: "scaling: sluice, 1 stream of 100 deltas, the same bytes each time", group: "scaling" },
  () => {
    runSluice(streams.short.chunks);
  },
);
