/** When each chunk of a fixture is sent: its recorded timing, or a pace; and the paced body. */
import type { Fixture } from "./fixtures.ts";
import { decodeAll } from "../stream/sse.ts";

/** How fast replay serves fixtures that have no recorded timing. */
export interface Pace {
  /** Delay before the first content delta (and the events between it and `message_start`), in ms. */
  ttftMs: number;
  /** Output rate afterwards; a delta's tokens are estimated as its characters / 4. */
  tokensPerSecond: number;
  /** Multiplies the speed of every fixture (recorded or not); 0 serves everything at once. */
  speed: number;
}

/** A chunk of a fixture and when to send it, in ms from the request. */
export interface ScheduledChunk {
  atMs: number;
  bytes: Uint8Array;
}

/** Splits a fixture into timed chunks: its recorded timing, or events paced by `pace`. */
export function schedule(fixture: Fixture, pace: Pace): ScheduledChunk[] {
  const bytes = fixture.sse ?? new Uint8Array();
  const scale = pace.speed === 0 ? 0 : 1 / pace.speed;
  if (fixture.timing?.length) {
    const chunks: ScheduledChunk[] = [];
    let offset = 0;
    for (const { at_ms, bytes: size } of fixture.timing) {
      chunks.push({ atMs: at_ms * scale, bytes: bytes.subarray(offset, offset + size) });
      offset += size;
    }
    if (offset < bytes.length) {
      chunks.push({ atMs: chunks.at(-1)?.atMs ?? 0, bytes: bytes.subarray(offset) });
    }
    return chunks;
  }
  const chunks: ScheduledChunk[] = [];
  let at = pace.ttftMs;
  let seenDelta = false;
  // As the API does: `message_start` (and anything before it) at once, in a chunk of its own;
  // the wait for the first token comes after it.
  let started = false;
  for (const segment of splitEvents(bytes)) {
    const events = decodeAll(segment);
    if (!started) {
      started = events.some((event) => event.event === "message_start");
      chunks.push({ atMs: 0, bytes: segment });
      continue;
    }
    for (const event of events) {
      if (event.event !== "content_block_delta") continue;
      if (seenDelta) at += (estimateTokens(event.data) / pace.tokensPerSecond) * 1000;
      seenDelta = true;
    }
    chunks.push({ atMs: at * scale, bytes: segment });
  }
  return chunks;
}

/** Splits SSE bytes after each blank line, keeping every byte (a cut tail is its own chunk). */
export function splitEvents(bytes: Uint8Array): Uint8Array[] {
  const LF = 0x0a, CR = 0x0d;
  const segments: Uint8Array[] = [];
  let start = 0;
  for (let i = 1; i < bytes.length; i++) {
    const b = bytes[i], p = bytes[i - 1];
    const endLf = b === LF &&
      (p === LF || (p === CR && bytes[i - 2] === LF && bytes[i - 3] === CR));
    const endCr = b === CR && p === CR && bytes[i + 1] !== LF;
    if (endLf || endCr) {
      segments.push(bytes.subarray(start, i + 1));
      start = i + 1;
    }
  }
  if (start < bytes.length) segments.push(bytes.subarray(start));
  return segments;
}

function estimateTokens(data: string): number {
  try {
    const delta = JSON.parse(data).delta ?? {};
    const text = delta.text ?? delta.partial_json ?? delta.thinking ?? "";
    return Math.max(1, Math.ceil(String(text).length / 4));
  } catch {
    return 1;
  }
}

/** A fixture's body as its chunks come due; errors like a dropped socket when `cut`. */
export function pacedStream(
  chunks: ScheduledChunk[],
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>,
  signal?: AbortSignal,
  cut = false,
): ReadableStream<Uint8Array> {
  let i = 0;
  let elapsed = 0;
  const cancelled = new AbortController();
  const onAbort = () => cancelled.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (i >= chunks.length) {
        signal?.removeEventListener("abort", onAbort);
        // A recording that ends inside an event is a cut connection: the body errors, as a
        // dropped socket's does, so sluice's own handling of a dropped upstream runs.
        if (cut) controller.error(new ReplayCutError());
        else controller.close();
        return;
      }
      const chunk = chunks[i++];
      const wait = chunk.atMs - elapsed;
      try {
        if (wait > 0) await sleep(wait, cancelled.signal);
      } catch (error) {
        controller.error(error);
        return;
      }
      elapsed = Math.max(elapsed, chunk.atMs);
      controller.enqueue(chunk.bytes);
    },
    cancel() {
      signal?.removeEventListener("abort", onAbort);
      cancelled.abort();
    },
  }, { highWaterMark: 0 });
}

/** How a replayed cut connection ends its body (a dropped socket's read fails similarly). */
export class ReplayCutError extends TypeError {
  constructor() {
    super("replay: the recorded connection was cut here");
    this.name = "ReplayCutError";
  }
}

/** `setTimeout` as a promise that rejects when `signal` aborts. */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
