/**
 * One Messages call through sluice: send upstream, then hand the client the upstream's answer
 * while the accumulator watches it. Both `/v1/messages` (bytes as they are) and `/chat` (a view
 * of the same stream) are built on this.
 *
 * The byte path: upstream body → `tapStream` (enqueue to the client first) → SSE decoder →
 * accumulator → observers. Nothing on that path awaits stats; the summary is delivered once, by
 * `finished`, after the response has ended.
 */
import type { AccumulatorObserver, StreamResult } from "../stream/accumulator.ts";
import { EventAccumulator } from "../stream/accumulator.ts";
import type { Clock } from "../clock.ts";
import { errorBody, ServerShutdownError, shutdownRefusal, sseErrorEvent } from "../errors.ts";
import type { Logger } from "../log.ts";
import { clientHeaders } from "./pass_headers.ts";
import type { RequestSummary } from "../stats/request_summary.ts";
import { tokenUsage, usageDetail } from "../stats/request_summary.ts";
import { createSseDecoder } from "../stream/sse.ts";
import { readBody, tapStream, UpstreamIdleError } from "../stream/tap.ts";
import type { StreamPolicy, Upstream, UpstreamRequest } from "./upstream.ts";
import { watchWaiting } from "./waiting.ts";
import { startCallTelemetry } from "../stats/otel.ts";

/** Options for {@link startCall}. */
export interface CallOptions {
  upstream: Upstream;
  clock: Clock;
  logger: Logger;
  /** Request arrival on `clock`, for TTFT. */
  startedAt: number;
  request: Omit<UpstreamRequest, "signal">;
  /** Summary fields the route knows. */
  endpoint: string;
  requestId: string;
  model: string | null;
  keyId?: string;
  /** Extra observers of the accumulated stream (the `/chat` view). */
  observer?: AccumulatorObserver;
  /** Overrides the upstream's idle timeout and keep-alive interval for this call. */
  streamPolicy?: Partial<StreamPolicy>;
  /**
   * Aborts when the client goes away before its answer is handed over (while sluice waits for
   * the upstream's headers, its retries, or a whole non-streamed body): the upstream call is
   * aborted and the request recorded as `client_aborted`. Routes pass `c.req.raw.signal`. Once
   * a stream is handed over it is no longer watched: the stream's own cancel takes over (under
   * `Deno.serve` the request signal also fires after a successful response).
   */
  clientSignal?: AbortSignal;
  /**
   * Graceful shutdown's cut (`Lifecycle.cut`): when it aborts, a stream in progress ends with an
   * SSE `error` event after the current event, and is recorded as `incomplete`; a call still
   * waiting for its answer is aborted upstream and refused with a 503 ({@link shutdownRefusal}).
   */
  cut?: AbortSignal;
}

/** The upstream's answer, ready for the client: a stream or a whole body. */
export type Call = StreamCall | JsonCall;

/** What every answer has, streamed or whole. */
interface CallBase {
  status: number;
  /** Upstream headers worth passing on (`request-id`, rate-limit headers, …). */
  headers: Headers;
  retries: number;
  /** Resolves once, when the response is over (completed, failed or abandoned). */
  finished: Promise<RequestSummary>;
  /** Stops the upstream request. */
  abort(reason?: unknown): void;
}

/** A streamed answer: the upstream's SSE body, tapped. */
export interface StreamCall extends CallBase {
  kind: "stream";
  /** The client's byte stream. */
  stream: ReadableStream<Uint8Array>;
  /** The accumulated result, available once `finished` resolves. */
  result: () => StreamResult | undefined;
}

/** A whole body: a message, or an error in the API's shape. */
export interface JsonCall extends CallBase {
  kind: "json";
  body: Uint8Array<ArrayBuffer>;
}

/**
 * Sends the request upstream and prepares the answer for the client, inside its OpenTelemetry
 * span (lib/stats/otel.ts), which ends when the answer is over.
 */
export async function startCall(options: CallOptions): Promise<Call> {
  const telemetry = startCallTelemetry({
    model: options.model,
    streaming: options.request.stream,
  });
  let call: Call;
  try {
    call = await sendAndTap(options);
  } catch (error) {
    telemetry.fail(error);
    throw error;
  }
  call.finished.then((summary) => telemetry.end(summary), () => {});
  return call;
}

async function sendAndTap(options: CallOptions): Promise<Call> {
  const { clock, startedAt } = options;
  const controller = new AbortController();
  const upstreamStartedAt = clock.now();
  // Until the answer is handed over, the client leaving or the shutdown's cut stops the wait.
  const waiting = watchWaiting(controller, options.clientSignal, options.cut);
  const unwatch = () => waiting.unwatch();
  let sent: Awaited<ReturnType<Upstream["send"]>>;
  try {
    sent = await options.upstream.send({ ...options.request, signal: controller.signal });
  } catch (error) {
    unwatch();
    if (waiting.cause === "shutdown") throw shutdownRefusal();
    if (waiting.cause !== "client") throw error;
    return clientGone(options, clock.now());
  }
  const { response, retries } = sent;
  const headers = clientHeaders(response.headers);
  // sluice sets the type itself below: a body it rewrites is labelled by what it became.
  headers.delete("content-type");
  const id = response.headers.get("request-id") ?? options.requestId;
  const base = {
    id,
    endpoint: options.endpoint,
    streaming: options.request.stream,
    model: options.model,
    status: response.status,
    retries,
    startedAt,
    keyId: options.keyId,
  };
  const contentType = response.headers.get("content-type") ?? "";
  const isStream = response.ok && contentType.includes("text/event-stream") && response.body;

  const policy = { ...options.upstream.streamPolicy, ...options.streamPolicy };

  if (!isStream) {
    let status = response.status;
    let body: Uint8Array<ArrayBuffer>;
    let failure: string | undefined;
    try {
      // A whole body sluice hands over as one piece: an echoed key is removed first.
      body = options.upstream.redact.bytes(
        await readBody(response.body, policy.idleTimeoutMs, controller.signal),
      );
    } catch (error) {
      unwatch();
      if (waiting.cause === "shutdown") throw shutdownRefusal();
      if (waiting.cause === "client") return clientGone(options, clock.now());
      // The headers came but the body did not: the client gets a clear 5xx, never a 500 or a
      // truncated JSON document.
      options.logger.warn("upstream body failed", { id, error: String(error) });
      const unread = unreadBody(error, id);
      status = unread.status;
      failure = "incomplete";
      body = new TextEncoder().encode(JSON.stringify(unread.body));
      headers.set("content-type", "application/json");
    }
    const parsed = failure ? null : safeParse(body);
    if (!failure && response.ok && !parsed) {
      // A 200 that is neither a stream nor JSON (a proxy's HTML page, a cut body): the SDKs
      // would fail to parse it, so say plainly what happened.
      options.logger.warn("upstream answer is not JSON", { id, contentType });
      status = 502;
      failure = "incomplete";
      body = new TextEncoder().encode(JSON.stringify(errorBody(
        "api_error",
        "the upstream answered 200 with a body that is not a JSON message",
        id,
      )));
      headers.set("content-type", "application/json");
    }
    const endedAt = clock.now();
    const finished: RequestSummary = {
      ...base,
      streaming: options.request.stream,
      model: (typeof parsed?.model === "string" ? parsed.model : null) ?? options.model,
      status,
      outcome: failure ?? (response.ok ? "ok" : errorTypeOf(parsed) ?? `http_${response.status}`),
      ttftMs: endedAt - startedAt,
      totalMs: endedAt - startedAt,
      upstreamTtftMs: endedAt - upstreamStartedAt,
      usage: tokenUsage(response.ok ? parsed?.usage : undefined),
      usageDetail: usageDetail(response.ok ? parsed?.usage : undefined),
      messageId: typeof parsed?.id === "string" ? parsed.id : undefined,
      stopReason: typeof parsed?.stop_reason === "string" ? parsed.stop_reason : null,
      events: {},
    };
    if (!headers.has("content-type")) {
      // A body sluice parsed as JSON is labelled so (the SDKs pick their parser by this header).
      headers.set(
        "content-type",
        parsed && !/json/i.test(contentType)
          ? "application/json"
          : contentType || "application/json",
      );
    }
    unwatch();
    return {
      status,
      headers,
      retries,
      kind: "json",
      body,
      finished: Promise.resolve(finished),
      abort: () => controller.abort(),
    };
  }

  let settle!: (summary: RequestSummary) => void;
  const finished = new Promise<RequestSummary>((resolve) => (settle = resolve));
  const accumulator = new EventAccumulator({ clock, startedAt, observer: options.observer });
  const decoder = createSseDecoder((event) => accumulator.push(event), {
    maxEventChars: policy.maxEventChars,
    onOverflow: () =>
      options.logger.warn("an upstream SSE event over the size limit was passed on unparsed", {
        id,
        maxEventChars: policy.maxEventChars,
      }),
  });
  let done = false;
  const finish = (outcome?: string) => {
    if (done) return;
    done = true;
    decoder.end();
    const result = accumulator.end();
    const message = result.message as unknown as Record<string, unknown> | null;
    settle({
      ...base,
      model: (typeof message?.model === "string" ? message.model : null) ?? options.model,
      outcome: outcome ??
        (result.error ? result.error.type : result.complete ? "ok" : "incomplete"),
      ttftMs: result.metrics.ttftMs,
      totalMs: result.metrics.totalMs ?? clock.now() - startedAt,
      upstreamTtftMs: accumulator.firstDeltaAt === null
        ? null
        : accumulator.firstDeltaAt - upstreamStartedAt,
      // What the usage reached, also when the stream was cut or its client left: the input
      // and cache tokens of message_start are billed either way.
      usage: tokenUsage(message?.usage),
      usageDetail: usageDetail(message?.usage),
      messageId: typeof message?.id === "string" ? message.id : undefined,
      stopReason: typeof message?.stop_reason === "string" ? message.stop_reason : null,
      events: result.events,
    });
  };
  const stream = tapStream(
    response.body!,
    {
      onChunk: (chunk) => decoder.feed(chunk),
      onClose: (state) => {
        finish();
        // A clean close is not a complete answer: without `message_stop` (and without an
        // upstream `error` event, which already ends the answer) the client must not mistake
        // the stream for a finished one. Bytes are added only here, after the upstream's last.
        const result = accumulator.end();
        if (result.events.message_stop || result.events.error) return undefined;
        options.logger.warn("upstream stream ended without message_stop", { id });
        const prefix = state.atEventBoundary ? "" : "\n\n";
        return new TextEncoder().encode(
          prefix + sseErrorEvent(
            "api_error",
            "the upstream stream ended without message_stop; the answer is incomplete",
          ),
        );
      },
      onCancel: (reason) => {
        // Abort first: the upstream stops generating (and billing) before anything else runs.
        controller.abort();
        finish(reason instanceof ServerShutdownError ? "incomplete" : "client_aborted");
      },
      onError: (error, state) => {
        controller.abort();
        const idle = error instanceof UpstreamIdleError;
        const shutdown = error instanceof ServerShutdownError;
        if (!shutdown) options.logger.warn("upstream stream failed", { id, error: String(error) });
        finish("incomplete");
        // The client must not mistake a cut stream for a finished one: end with an error event.
        // Inside an event, a blank line first ends it (two line feeds work after any ending).
        const prefix = state.atEventBoundary ? "" : "\n\n";
        const message = shutdown
          ? error.message
          : idle
          ? `the upstream sent nothing for ${error.idleMs} ms; the answer is incomplete`
          : "the upstream connection dropped mid-stream; the answer is incomplete";
        return new TextEncoder().encode(prefix + sseErrorEvent("api_error", message));
      },
    },
    (error) => options.logger.error("stream observer failed", { id, error: String(error) }),
    {
      idleTimeoutMs: policy.idleTimeoutMs,
      keepAliveMs: policy.keepAliveMs,
      cut: options.cut,
    },
  );
  headers.set("content-type", contentType);
  unwatch();
  return {
    status: response.status,
    headers,
    retries,
    kind: "stream",
    stream,
    result: () => (done ? accumulator.end() : undefined),
    finished,
    abort: (reason) => controller.abort(reason),
  };
}

/**
 * What the client gets when the upstream's headers came but its body did not (`error` from
 * {@link readBody}): a clear 5xx in Anthropic's shape, never a 500 or a truncated document.
 */
export function unreadBody(error: unknown, requestId?: string): {
  status: 504 | 502;
  body: ReturnType<typeof errorBody>;
} {
  if (error instanceof UpstreamIdleError) {
    return {
      status: 504,
      body: errorBody(
        "timeout_error",
        `the upstream sent nothing for ${error.idleMs} ms while sending its answer`,
        requestId,
      ),
    };
  }
  return {
    status: 502,
    body: errorBody(
      "api_error",
      "the upstream connection dropped before the whole answer arrived",
      requestId,
    ),
  };
}

/** The answer for a client that left before sluice could answer (nobody reads it). */
function clientGone(options: CallOptions, endedAt: number): Call {
  const body = new TextEncoder().encode(JSON.stringify(
    errorBody("invalid_request_error", "the client closed the request", options.requestId),
  ));
  const summary: RequestSummary = {
    id: options.requestId,
    endpoint: options.endpoint,
    streaming: options.request.stream,
    model: options.model,
    outcome: "client_aborted",
    status: 499, // nginx's "client closed request"

    retries: 0,
    startedAt: options.startedAt,
    ttftMs: null,
    totalMs: endedAt - options.startedAt,
    upstreamTtftMs: null,
    usage: tokenUsage(undefined),
    stopReason: null,
    events: {},
    keyId: options.keyId,
  };
  return {
    status: 499,
    headers: new Headers({ "content-type": "application/json" }),
    retries: 0,
    kind: "json",
    body,
    finished: Promise.resolve(summary),
    abort: () => {},
  };
}

function safeParse(body: Uint8Array): Record<string, unknown> | null {
  try {
    const value = JSON.parse(new TextDecoder().decode(body));
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

function errorTypeOf(body: Record<string, unknown> | null): string | null {
  const error = body?.error as { type?: unknown } | undefined;
  return typeof error?.type === "string" ? error.type : null;
}
