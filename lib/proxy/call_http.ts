/**
 * The HTTP edges of a proxied call, shared by the routes that tap a stream
 * (`/v1/messages`, `/v1/chat/completions`): the upstream request built from the caller's, and
 * the client's response built from the call.
 */
import type { Context } from "hono";
import type { AppEnv, RouteDeps } from "../app_env.ts";
import type { Call } from "./messages_call.ts";
import { upstreamHeaders } from "./pass_headers.ts";
import { bufferedResponse, markEnd } from "../http/response_end.ts";
import type { UpstreamRequest } from "./upstream.ts";
import { createStreamWriter, type StreamMeta } from "../chat/resume.ts";
import { SluiceError } from "../errors.ts";
import { kvUnavailable } from "../kv.ts";
import { resumableStream } from "./resumable_stream.ts";

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
  options: RespondOptions = {},
): Response {
  deps.record(call.finished);
  if (call.kind === "json") {
    return bufferedResponse(call.body, { status: call.status, headers: call.headers });
  }
  let stream = call.stream;
  if (options.resume && deps.streams) {
    const { live, kv, batcher } = deps.streams;
    const writer = createStreamWriter({
      kv,
      batcher,
      owner: options.resume.owner,
      clock: deps.clock,
      logger: deps.logger,
      settings: deps.config.resume,
      meta: options.resume.meta,
      onEnd: () => live.delete(writer.id),
      track: (work) => deps.lifecycle?.track(work),
    });
    live.add(writer);
    call.headers.set("x-sluice-stream-id", writer.id);
    stream = resumableStream(stream, {
      writer,
      finishOnDisconnect: options.finishOnDisconnect ?? false,
      onError: (error) =>
        deps.logger.warn("reading a stream after its client left failed", {
          id: options.resume?.meta.requestId,
          error: String(error),
        }),
    });
  } else if (options.finishOnDisconnect) {
    // Only when asked for: the default path stays the tap itself, with no layer added.
    stream = finishOnCancel(stream);
  }
  deps.lifecycle?.adopt(stream, call.finished);
  markEnd(stream, call.finished);
  for (const [key, value] of Object.entries(SSE_HEADERS)) call.headers.set(key, value);
  return new Response(stream, { status: call.status, headers: call.headers });
}

/** Options for {@link respondWithCall}. */
export interface RespondOptions {
  /** Read the answer to its end when the client leaves (`x-sluice-on-disconnect: finish`). */
  finishOnDisconnect?: boolean;
  /**
   * Make a streamed answer resumable (`x-sluice-resumable`, needs `deps.streams`): its events
   * get `id:` lines and are buffered in KV under `owner` (the caller's key id).
   */
  resume?: { owner: string; meta: StreamMeta };
}

/**
 * The header a `/v1/messages` caller sends to have its answer read to the end when it leaves
 * (`x-sluice-on-disconnect: finish`): the usage of the whole answer is recorded. Without it
 * the SDKs' semantics hold: a client that leaves aborts the upstream call at once.
 */
export const ON_DISCONNECT_HEADER = "x-sluice-on-disconnect";

/**
 * A request's own disconnect policy: a client whose Stop button means "stop paying" sends
 * `x-sluice-on-disconnect: abort`, one that wants its answer whole sends `finish`; anything else
 * leaves the route's default in charge.
 */
export function disconnectPolicy(value: string | undefined): "finish" | "abort" | undefined {
  const policy = value?.trim().toLowerCase();
  return policy === "finish" || policy === "abort" ? policy : undefined;
}

/**
 * The header a `/v1/messages` caller sends to make its stream resumable
 * (`x-sluice-resumable: true`): every event gets an `id:` line and is buffered in KV for
 * `GET /chat/streams/{id}`. Without it the bytes are the upstream's, unchanged.
 */
export const RESUMABLE_HEADER = "x-sluice-resumable";

/**
 * Whether a request asked for a resumable stream. A value that is not a yes or a no is a 400
 * (a caller that meant to resume must not find out after losing its connection); asking for one
 * without Deno KV is a 503.
 */
export function resumableRequested(deps: RouteDeps, value: string | undefined): boolean {
  if (value === undefined) return false;
  const v = value.trim().toLowerCase();
  if (/^(0|false|no|off)$/.test(v)) return false;
  if (!/^(1|true|yes|on)$/.test(v)) {
    throw new SluiceError(
      400,
      "invalid_request_error",
      `${RESUMABLE_HEADER} must be true or false, not ${JSON.stringify(value.slice(0, 40))}`,
    );
  }
  if (!deps.streams) throw kvUnavailable("resumable streams", deps.kvFault);
  return true;
}

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
