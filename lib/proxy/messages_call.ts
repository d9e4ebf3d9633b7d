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
import { errorBody, sseErrorEvent } from "../errors.ts";
import type { Logger } from "../log.ts";
import { clientHeaders } from "./pass_headers.ts";
import type { RequestSummary } from "../stats/request_summary.ts";
import { tokenUsage, usageDetail } from "../stats/request_summary.ts";
import type { StreamPolicy, Upstream, UpstreamRequest } from "./upstream.ts";
import {
  clientGoneCall,
  jsonCall,
  readWholeAnswer,
  sendWatched,
  stringField,
  type SummaryBase,
  tapUpstream,
  type Watched,
  wholeAnswerSummary,
} from "./call_parts.ts";
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
  /**
   * The failure sluice itself ended the stream with (its own `error` event after a cut, a
   * silent upstream or a missing `message_stop`), once written; the upstream's own `error`
   * event is in `result()` instead. Lets a view say why without re-parsing sluice's bytes.
   */
  failure: () => CallFailure | undefined;
}

/** A failure as sluice says it in an `error` event. */
export interface CallFailure {
  type: string;
  message: string;
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

/** What the answer's two paths (whole body, stream) share once the headers came. */
interface Answering {
  options: CallOptions;
  watched: Watched;
  headers: Headers;
  base: SummaryBase & Pick<RequestSummary, "status" | "retries">;
  policy: StreamPolicy;
  upstreamStartedAt: number;
}

async function sendAndTap(options: CallOptions): Promise<Call> {
  const upstreamStartedAt = options.clock.now();
  const watched = await sendWatched(
    options.upstream,
    { ...options.request, requestId: options.requestId },
    options.clientSignal,
    options.cut,
  );
  if (!watched) return clientGone(options);
  const { response, retries } = watched.sent;
  const headers = clientHeaders(response.headers);
  // sluice sets the type itself below: a body it rewrites is labelled by what it became.
  headers.delete("content-type");
  const base = {
    id: response.headers.get("request-id") ?? options.requestId,
    endpoint: options.endpoint,
    streaming: options.request.stream,
    model: options.model,
    status: response.status,
    retries,
    startedAt: options.startedAt,
    keyId: options.keyId,
  };
  const contentType = response.headers.get("content-type") ?? "";
  const isStream = response.ok && contentType.includes("text/event-stream") && response.body;
  const policy = { ...options.upstream.streamPolicy, ...options.streamPolicy };
  const answering = { options, watched, headers, base, policy, upstreamStartedAt };
  return isStream ? tapAnswer(answering) : await wholeAnswer(answering);
}

/** A whole body: a message, an error in the API's shape, or sluice's error in its place. */
async function wholeAnswer(answering: Answering): Promise<Call> {
  const { options, watched, headers, base } = answering;
  const contentType = watched.sent.response.headers.get("content-type") ?? "";
  const answer = await readWholeAnswer(options.upstream, watched, {
    logger: options.logger,
    id: base.id,
    headers,
    idleTimeoutMs: answering.policy.idleTimeoutMs,
    errorJson: (type, message) => errorBody(type, message, base.id),
    expected: "a JSON message",
  });
  if (!answer) return clientGone(options);
  const { parsed } = answer;
  const ok = watched.sent.response.ok;
  const summary = wholeAnswerSummary(base, answer, {
    upstreamStartedAt: answering.upstreamStartedAt,
    endedAt: options.clock.now(),
  }, {
    usage: tokenUsage(ok ? parsed?.usage : undefined),
    usageDetail: usageDetail(ok ? parsed?.usage : undefined),
    messageId: stringField(parsed, "id") ?? undefined,
    stopReason: stringField(parsed, "stop_reason"),
  });
  if (!headers.has("content-type")) {
    // A body sluice parsed as JSON is labelled so (the SDKs pick their parser by this header).
    headers.set(
      "content-type",
      parsed && !/json/i.test(contentType) ? "application/json" : contentType || "application/json",
    );
  }
  return jsonCall(answer, watched, headers, summary);
}

/** A streamed answer: the upstream's SSE body, tapped on its way to the client. */
function tapAnswer(answering: Answering): StreamCall {
  const { options, base } = answering;
  const { clock, startedAt, logger } = options;
  const accumulator = new EventAccumulator({ clock, startedAt, observer: options.observer });
  return tapUpstream(answering.watched, {
    logger,
    id: base.id,
    policy: answering.policy,
    cut: options.cut,
    redact: options.upstream.redact.chunks(),
    headers: answering.headers,
    push: (event) => accumulator.push(event),
    summarize: (outcome) => streamSummary(answering, accumulator, outcome),
    sseError: sseErrorEvent,
    closeFailure: () => {
      // A clean close is not a complete answer: without `message_stop` (and without an
      // upstream `error` event, which already ends the answer) the client must not mistake
      // the stream for a finished one. Bytes are added only here, after the upstream's last.
      const result = accumulator.end();
      if (result.events.message_stop || result.events.error) return undefined;
      logger.warn("upstream stream ended without message_stop", { id: base.id });
      return {
        type: "api_error",
        message: "the upstream stream ended without message_stop; the answer is incomplete",
      };
    },
    result: (done) => (done ? accumulator.end() : undefined),
  });
}

/** The summary of a streamed answer, from what the accumulator saw. */
function streamSummary(
  { options, base, upstreamStartedAt }: Answering,
  accumulator: EventAccumulator,
  outcome?: string,
): RequestSummary {
  const result = accumulator.end();
  const message = result.message as unknown as Record<string, unknown> | null;
  return {
    ...base,
    model: stringField(message, "model") ?? options.model,
    outcome: outcome ?? (result.error ? result.error.type : result.complete ? "ok" : "incomplete"),
    ttftMs: result.metrics.ttftMs,
    totalMs: result.metrics.totalMs ?? options.clock.now() - options.startedAt,
    upstreamTtftMs: accumulator.firstDeltaAt === null
      ? null
      : accumulator.firstDeltaAt - upstreamStartedAt,
    // What the usage reached, also when the stream was cut or its client left: the input
    // and cache tokens of message_start are billed either way.
    usage: tokenUsage(message?.usage),
    usageDetail: usageDetail(message?.usage),
    messageId: stringField(message, "id") ?? undefined,
    stopReason: stringField(message, "stop_reason"),
    events: result.events,
  };
}

/** The answer for a client that left before sluice could answer (nobody reads it). */
function clientGone(options: CallOptions): Call {
  const base = {
    id: options.requestId,
    endpoint: options.endpoint,
    streaming: options.request.stream,
    model: options.model,
    startedAt: options.startedAt,
    keyId: options.keyId,
  };
  return clientGoneCall(
    base,
    options.clock.now(),
    (type, message) => errorBody(type, message, options.requestId),
  );
}
