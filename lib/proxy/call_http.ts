/**
 * The HTTP edges of a proxied call, shared by the routes that tap a stream
 * (`/v1/messages`, `/v1/chat/completions`): the upstream request built from the caller's, and
 * the client's response built from the call.
 */
import type { Context } from "hono";
import type { AppEnv, RouteDeps } from "../app_env.ts";
import type { Call } from "./messages_call.ts";
import { upstreamHeaders } from "./pass_headers.ts";
import { markEnd } from "../http/response_end.ts";
import type { UpstreamRequest } from "./upstream.ts";

/** SSE response headers that stop proxies from buffering or transforming the stream. */
export const SSE_HEADERS: Readonly<Record<string, string>> = {
  "cache-control": "no-cache, no-transform",
  "x-accel-buffering": "no",
};

/**
 * The upstream request for the caller's: its path with the query string (`?beta=true`), its
 * body byte for byte, the API's headers, the caller's key style, and the replay fixture asked for.
 */
export function upstreamRequestOf(
  c: Context<AppEnv>,
  body: Uint8Array,
  stream: boolean,
): Omit<UpstreamRequest, "signal"> {
  const url = new URL(c.req.url);
  return {
    path: url.pathname + url.search,
    body,
    stream,
    headers: upstreamHeaders(c.req.raw.headers),
    authStyle: c.get("authStyle"),
    fixture: c.req.header("x-sluice-fixture"),
  };
}

/**
 * What every tapped call takes from the app and the request: the upstream, clock and logger, the
 * request's arrival, ids and key, the client's signal (watched only until the answer is handed
 * over; the stream's cancel takes over then) and the shutdown cut (the tap ends the stream itself).
 */
export function callContext(deps: RouteDeps, c: Context<AppEnv>) {
  return {
    upstream: deps.upstream,
    clock: deps.clock,
    logger: deps.logger,
    startedAt: c.get("startedAt"),
    requestId: c.get("requestId"),
    keyId: c.get("keyId"),
    clientSignal: c.req.raw.signal,
    cut: deps.lifecycle?.cut,
  };
}

/**
 * The client's response for a call: records its summary when it is over, hands a stream to the
 * shutdown lifecycle (which ends it with an error event if it is still running then) with the
 * SSE headers, or sends the whole body.
 */
export function respondWithCall(
  deps: RouteDeps,
  call: Call,
  options: { finishOnDisconnect?: boolean } = {},
): Response {
  deps.record(call.finished);
  if (call.kind === "json") {
    return new Response(call.body, { status: call.status, headers: call.headers });
  }
  // Only when asked for: the default path stays the tap itself, with no layer added.
  const stream = options.finishOnDisconnect ? finishOnCancel(call.stream) : call.stream;
  deps.lifecycle?.adopt(stream, call.finished);
  markEnd(stream, call.finished);
  for (const [key, value] of Object.entries(SSE_HEADERS)) call.headers.set(key, value);
  return new Response(stream, { status: call.status, headers: call.headers });
}

/**
 * The header a `/v1/messages` caller sends to have its answer read to the end when it leaves
 * (`x-sluice-on-disconnect: finish`): the usage of the whole answer is recorded. Without it
 * the SDKs' semantics hold: a client that leaves aborts the upstream call at once.
 */
export const ON_DISCONNECT_HEADER = "x-sluice-on-disconnect";

/**
 * `stream` for a client whose leaving must not stop it: a cancel reads the rest of `stream` to
 * its end (its tap sees every event) instead of cancelling it. Hand-written: no stream
 * combinator keeps reading a source after its consumer cancelled.
 */
export function finishOnCancel(stream: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = stream.getReader();
  let cancelled = false;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (cancelled) return;
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel() {
      cancelled = true;
      (async () => {
        while (!(await reader.read()).done) { /* drained: the tap records it */ }
      })().catch(() => {});
    },
  }, { highWaterMark: 0 });
}
