/**
 * Garbage and CPU per event of the tap, in-process: how many bytes of JS heap each event leaves
 * behind on the gateway's byte path, and its CPU time, for
 *
 * - `js-copy`: a JavaScript stream that forwards every chunk and does nothing else (the
 *   gateway bench's yardstick);
 * - `tap`: `tapStream` with no hooks and no timers;
 * - `tap + timers`: with the idle timeout and keep-alives the gateway arms on every stream;
 * - `tap + timers + accumulator`: what the gateway runs per chunk (decoder and accumulator too).
 *
 * The body is a byte stream, as a `fetch` body is, so the tap reads it with its BYOB buffer. Every
 * event the gateway carries is garbage the young generation must collect; fewer bytes per event
 * means fewer scavenges, and a scavenge is a pause every open stream waits through.
 *
 * Run (the semi-space flags keep the collector out of the measurement, so the heap's growth is
 * what was allocated):
 *   deno run --v8-flags=--expose-gc,--min-semi-space-size=512,--max-semi-space-size=512 \
 *     tests/bench_tap.ts [events]
 */
import process from "node:process";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { createSseDecoder } from "../lib/stream/sse.ts";
import { type TapHooks, type TapOptions, tapStream } from "../lib/stream/tap.ts";
import { textStream } from "./bench_support.ts";

const events = Number(Deno.args[0] ?? 20_000);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc (see the header)");
const { chunks } = textStream(events);

/** A byte stream over `chunks`, one chunk per pull, each in a buffer of its own. */
function byteBody(): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    type: "bytes",
    pull(controller) {
      if (i < chunks.length) {
        controller.enqueue(chunks[i++].slice());
        return;
      }
      controller.close();
      controller.byobRequest?.respond(0);
    },
  });
}

const noHooks: TapHooks = {
  onChunk() {},
  onClose() {},
  onCancel() {},
  onError: () => undefined,
};
const timers: TapOptions = { idleTimeoutMs: 60_000, keepAliveMs: 15_000 };

function jsCopy(): ReadableStream<Uint8Array> {
  const reader = byteBody().getReader();
  return new ReadableStream({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
  }, { highWaterMark: 0 });
}

function accumulated(): ReadableStream<Uint8Array> {
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((event) => accumulator.push(event));
  return tapStream(
    byteBody(),
    {
      ...noHooks,
      onChunk: (chunk) => decoder.feed(chunk),
      onClose: () => {
        decoder.end();
        accumulator.end();
      },
    },
    undefined,
    timers,
  );
}

const variants: [string, () => ReadableStream<Uint8Array>][] = [
  ["js-copy", jsCopy],
  ["tap", () => tapStream(byteBody(), noHooks)],
  ["tap + timers", () => tapStream(byteBody(), noHooks, undefined, timers)],
  ["tap + timers + accumulator", accumulated],
];

async function drain(stream: ReadableStream<Uint8Array>) {
  const reader = stream.getReader();
  while (!(await reader.read()).done) { /* as the client would */ }
}

console.log(`${chunks.length} events per stream`);
for (const [name, make] of variants) {
  await drain(make()); // warm-up
  await drain(make());
  gc();
  gc();
  const heap = Deno.memoryUsage().heapUsed;
  const cpu = process.cpuUsage();
  await drain(make());
  const used = process.cpuUsage(cpu);
  const bytes = (Deno.memoryUsage().heapUsed - heap) / chunks.length;
  const micros = (used.user + used.system) / chunks.length;
  console.log(
    `${name.padEnd(28)} ${bytes.toFixed(0).padStart(6)} B/event  ${micros.toFixed(2)} µs/event`,
  );
}
