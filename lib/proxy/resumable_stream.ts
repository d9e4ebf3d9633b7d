/**
 * A `/v1/messages` stream that asked to be resumable (`x-sluice-resumable: true`): the tapped
 * upstream bytes as they are, with an `id:` line at the end of each event (the SDKs ignore it), and
 * every event buffered in Deno KV by a {@link StreamWriter} for `GET /chat/streams/{id}`.
 *
 * Events are handed over whole: a chunk that ends inside an event holds that event back until
 * its end arrives (the upstream sends whole events in practice, so nothing waits). Comments
 * (keep-alives) pass through without an id and are not stored.
 */
import { concatBytes } from "../bytes.ts";
import { sseErrorEvent } from "../errors.ts";
import type { StreamWriter } from "../chat/resume.ts";
import { createBlockSplitter, isEventBlock } from "../stream/event_blocks.ts";

/** The final event a resuming client gets when the answer was stopped by its client leaving. */
export const ABORTED_MESSAGE =
  "the client disconnected and x-sluice-on-disconnect: abort stopped the answer";

/** Options for {@link resumableStream}. */
export interface ResumableStreamOptions {
  writer: StreamWriter;
  /**
   * When the client leaves: `true` reads the rest of the answer (stored, recorded, resumable);
   * `false` cancels the tap, which aborts the upstream call, and the stream ends with an
   * `error` event saying so.
   */
  finishOnDisconnect: boolean;
  /** Reports a failure of the background read after the client left. */
  onError?: (error: unknown) => void;
}

/** Numbers and buffers the events of `tapped`; see the module doc. */
export function resumableStream(
  tapped: ReadableStream<Uint8Array>,
  options: ResumableStreamOptions,
): ReadableStream<Uint8Array> {
  const { writer } = options;
  const reader = tapped.getReader();
  const splitter = createBlockSplitter();
  let ended = false;
  let cancelled = false;
  let aborting = false;

  const numbered = (blocks: Uint8Array[], into: Uint8Array[]) => {
    for (const block of blocks) into.push(isEventBlock(block) ? writer.push(block) : block);
  };

  /** One read of the tap: what it completes, numbered (null when nothing). */
  async function step(): Promise<Uint8Array | null> {
    if (ended) return null;
    const { done, value } = await reader.read();
    const parts: Uint8Array[] = [];
    if (done) {
      ended = true;
      if (aborting) return null; // the cancel writes the end
      const { blocks, rest } = splitter.end();
      numbered(blocks, parts);
      if (rest.length > 0) parts.push(rest); // bytes after the last event: passed on, not stored
      writer.end();
    } else numbered(splitter.feed(value), parts);
    return parts.length === 0 ? null : parts.length === 1 ? parts[0] : concatBytes(parts);
  }
  // Steps run one at a time: a read that goes on after a cancel waits for the pull's.
  let stepping: Promise<Uint8Array | null> = Promise.resolve(null);
  const next = () => (stepping = stepping.then(step));

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        const bytes = await next();
        if (cancelled) return;
        if (bytes) controller.enqueue(bytes);
        if (ended) {
          controller.close();
          return;
        }
        if (bytes) return;
      }
    },
    async cancel(reason) {
      cancelled = true;
      if (ended) return;
      if (options.finishOnDisconnect) {
        // Read to the end: the tap records the whole answer, and KV holds it for a resume.
        (async () => {
          while (!ended) await next();
        })().catch((error) => options.onError?.(error));
        return;
      }
      aborting = true;
      await reader.cancel(reason); // the tap aborts the upstream call
      await stepping.catch(() => null);
      ended = true;
      writer.push(sseErrorEvent("api_error", ABORTED_MESSAGE));
      writer.end();
    },
  }, { highWaterMark: 0 });
}
