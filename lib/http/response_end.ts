/**
 * When a streamed response is over, for the middleware that must act then (the in-flight limit
 * gives its slot back): a route that already knows (a tapped call's `finished`) says so here, and
 * the middleware waits on that promise instead of wrapping the body in one more JavaScript
 * stream, which every chunk would pass through.
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
 * would build a stream for bytes that Deno otherwise writes at once; the in-flight limit wrapped
 * such bodies in one more stream and Hono rebuilt the response around it, about a quarter of a
 * millisecond per whole answer (docs/performance.md).
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
