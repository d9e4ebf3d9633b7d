/**
 * When a streamed response is over, for the middleware that must act then (the in-flight limit
 * gives its slot back): a route that already knows (a tapped call's `finished`) says so here, and
 * the middleware waits on that promise instead of wrapping the body in one more JavaScript
 * stream, which every chunk would pass through.
 */
const ends = new WeakMap<ReadableStream<Uint8Array>, Promise<unknown>>();

/** Records that `body` is over once `finished` settles (completed, failed or cancelled). */
export function markEnd(body: ReadableStream<Uint8Array>, finished: Promise<unknown>): void {
  ends.set(body, finished);
}

/** The promise a route gave for `body` with {@link markEnd}, if any. */
export function endOf(body: ReadableStream<Uint8Array>): Promise<unknown> | undefined {
  return ends.get(body);
}
