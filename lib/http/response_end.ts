/**
 * When a response is over, for the middleware that must act then (the in-flight limit gives its
 * slot back): a route that already knows says so here. A streamed body is marked with the
 * promise that settles at its end (a tapped call's `finished`), so the middleware waits on it
 * instead of wrapping the body in one more JavaScript stream, which every chunk would pass
 * through; a response whose body is already in memory is marked as such and is over at once.
 */
const ends = new WeakMap<ReadableStream<Uint8Array>, Promise<unknown>>();
const buffered = new WeakSet<Response>();

/** Records that `body` is over once `finished` settles (completed, failed or cancelled). */
export function markEnd(body: ReadableStream<Uint8Array>, finished: Promise<unknown>): void {
  ends.set(body, finished);
}

/** The promise a route gave for `body` with {@link markEnd}, if any. */
export function endOf(body: ReadableStream<Uint8Array>): Promise<unknown> | undefined {
  return ends.get(body);
}

/**
 * A response whose body is whole in memory (a JSON answer read from the upstream): it is over
 * for the upstream as soon as it exists. Keyed by the `Response`, because asking it for its body
 * would build a stream for bytes that Deno otherwise writes at once. (The in-flight limit used to
 * wrap such bodies in one more stream, and Hono rebuilt the response around it: 8-14% of the CPU
 * of a whole answer at 10 clients in the request bench, docs/performance.md.)
 */
export function bufferedResponse(
  body: BodyInit | null,
  init: ResponseInit,
): Response {
  const response = new Response(body, init);
  buffered.add(response);
  return response;
}

/** Whether `response` was made by {@link bufferedResponse}. */
export function isBuffered(response: Response): boolean {
  return buffered.has(response);
}
