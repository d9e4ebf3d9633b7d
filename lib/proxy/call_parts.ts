/**
 * The parts every call through sluice shares, whatever its dialect (Messages in
 * messages_call.ts, OpenAI's chat completions in lib/openai/call.ts, the forwarded `/v1/*` calls
 * in forward.ts): sending while the client and the shutdown's cut are watched, reading a whole
 * body, the answer for a client that left, the summary of a whole answer, the error a cut stream
 * ends with. What differs between the dialects (the error shape, the usage, the stream's tap) is
 * passed in.
 */
import type { ChunkRedactor } from "../redact.ts";
import { ServerShutdownError, shutdownRefusal } from "../errors.ts";
import { errorBody } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { RequestSummary } from "../stats/request_summary.ts";
import { tokenUsage } from "../stats/request_summary.ts";
import { createSseDecoder, type SseEvent } from "../stream/sse.ts";
import { readBodyWithin, tapStream, UpstreamIdleError } from "../stream/tap.ts";
import type { CallFailure, JsonCall, StreamCall } from "./messages_call.ts";
import type { StreamPolicy, Upstream, UpstreamRequest } from "./upstream.ts";
import { type Waiting, watchWaiting } from "./waiting.ts";

/** What the upstream's `send` resolves to. */
export type Sent = Awaited<ReturnType<Upstream["send"]>>;

/** A call on its way: the upstream's answer, its abort, and the watch over the wait. */
export interface Watched {
  sent: Sent;
  controller: AbortController;
  waiting: Waiting;
}

/** An error body in a dialect's shape (Anthropic's or OpenAI's). */
export type ErrorJson = (type: string, message: string) => unknown;

/** The summary fields a call knows before its answer is read. */
export type SummaryBase = Pick<
  RequestSummary,
  "id" | "endpoint" | "streaming" | "model" | "startedAt" | "keyId"
>;

/**
 * Sends `request` upstream while `clientSignal` and `cut` are watched (the wait for the headers
 * and the retries is abandoned when either aborts). Resolves to null when the client left first;
 * throws {@link shutdownRefusal} when the shutdown's cut came first.
 */
export async function sendWatched(
  upstream: Upstream,
  request: Omit<UpstreamRequest, "signal">,
  clientSignal?: AbortSignal,
  cut?: AbortSignal,
): Promise<Watched | null> {
  const controller = new AbortController();
  // Until the answer is handed over, the client leaving or the shutdown's cut stops the wait.
  const waiting = watchWaiting(controller, clientSignal, cut);
  try {
    const sent = await upstream.send({ ...request, signal: controller.signal });
    return { sent, controller, waiting };
  } catch (error) {
    waiting.unwatch();
    if (waiting.cause === "shutdown") throw shutdownRefusal();
    if (waiting.cause !== "client") throw error;
    return null;
  }
}

/** The answer for a client that left before sluice could answer (nobody reads it). */
export function clientGoneCall(
  base: SummaryBase,
  endedAt: number,
  errorJson: ErrorJson,
): JsonCall {
  const summary: RequestSummary = {
    ...base,
    outcome: "client_aborted",
    status: 499, // nginx's "client closed request"
    retries: 0,
    ttftMs: null,
    totalMs: endedAt - base.startedAt,
    upstreamTtftMs: null,
    usage: tokenUsage(undefined),
    stopReason: null,
    events: {},
  };
  return {
    status: 499,
    headers: new Headers({ "content-type": "application/json" }),
    retries: 0,
    kind: "json",
    body: jsonBytes(errorJson("invalid_request_error", "the client closed the request")),
    finished: Promise.resolve(summary),
    abort: () => {},
  };
}

/** A whole answer as the client gets it: the upstream's body, or sluice's error in its place. */
export interface WholeAnswer {
  status: number;
  body: Uint8Array<ArrayBuffer>;
  /** The body as a JSON object, when it is one (null after a failure). */
  parsed: Record<string, unknown> | null;
  /** The outcome when sluice answered in the upstream's place (`incomplete`). */
  failure?: string;
}

/** What {@link readWholeAnswer} needs besides the call. */
export interface WholeAnswerOptions {
  logger: Logger;
  /** The request id, for logs and the error body. */
  id: string;
  /** The client's headers: `content-type` is set when sluice writes the body itself. */
  headers: Headers;
  idleTimeoutMs: number;
  errorJson: ErrorJson;
  /** What a 200 that is not JSON is said to lack, e.g. "a JSON message". */
  expected: string;
  /** Replaces a parsed body before it is checked (the OpenAI dialect's rewrite of sluice's own). */
  rewrite?: (parsed: Record<string, unknown> | null) => Record<string, unknown>;
}

/**
 * Reads a non-streamed answer whole, with an echoed key removed, and stops watching the wait.
 * Resolves to null when the client left meanwhile; throws {@link shutdownRefusal} on the cut.
 */
export async function readWholeAnswer(
  upstream: Upstream,
  { sent, controller, waiting }: Watched,
  options: WholeAnswerOptions,
): Promise<WholeAnswer | null> {
  const { response } = sent;
  const { logger, id, headers } = options;
  let answer: WholeAnswer;
  try {
    // A whole body sluice hands over as one piece: an echoed key is removed first.
    // Whole within the idle timeout: a non-streamed answer's body follows its headers at once.
    const body = upstream.redact.bytes(
      await readBodyWithin(
        response,
        options.idleTimeoutMs,
        controller.signal,
        () => controller.abort(),
      ),
    );
    answer = { status: response.status, body, parsed: safeParse(body) };
  } catch (error) {
    waiting.unwatch();
    if (waiting.cause === "shutdown") throw shutdownRefusal();
    if (waiting.cause === "client") return null;
    // The headers came but the body did not: the client gets a clear 5xx, never a 500 or a
    // truncated JSON document.
    logger.warn("upstream body failed", { id, error: String(error) });
    const unread = unreadBody(error, id);
    headers.set("content-type", "application/json");
    const body = jsonBytes(options.errorJson(unread.body.error.type, unread.body.error.message));
    return { status: unread.status, body, parsed: null, failure: "incomplete" };
  }
  waiting.unwatch();
  if (options.rewrite) {
    answer.parsed = options.rewrite(answer.parsed);
    answer.body = jsonBytes(answer.parsed);
    headers.set("content-type", "application/json");
  }
  if (response.ok && !answer.parsed) {
    // A 2xx that is neither a stream nor JSON (a proxy's HTML page, a cut body, a 204): the
    // SDKs would fail to parse it, so say plainly what happened.
    const contentType = response.headers.get("content-type") ?? "";
    logger.warn("upstream answer is not JSON", { id, contentType });
    headers.set("content-type", "application/json");
    const message =
      `the upstream answered ${response.status} with a body that is not ${options.expected}`;
    return {
      status: 502,
      body: jsonBytes(options.errorJson("api_error", message)),
      parsed: null,
      failure: "incomplete",
    };
  }
  return answer;
}

/** The summary of a whole answer; `fields` are the dialect's usage and stop reason. */
export function wholeAnswerSummary(
  base: SummaryBase & Pick<RequestSummary, "status" | "retries">,
  answer: WholeAnswer,
  times: { upstreamStartedAt: number; endedAt: number },
  fields: Pick<RequestSummary, "usage" | "stopReason"> & Partial<RequestSummary>,
): RequestSummary {
  const { parsed } = answer;
  const ok = base.status >= 200 && base.status < 300;
  const elapsed = times.endedAt - base.startedAt;
  return {
    ...base,
    model: stringField(parsed, "model") ?? base.model,
    status: answer.status,
    outcome: answer.failure ?? (ok ? "ok" : errorTypeOf(parsed) ?? `http_${base.status}`),
    ttftMs: elapsed,
    totalMs: elapsed,
    upstreamTtftMs: times.endedAt - times.upstreamStartedAt,
    events: {},
    ...fields,
  };
}

/** A whole answer as the client's {@link JsonCall}. */
export function jsonCall(
  answer: WholeAnswer,
  { sent, controller }: Watched,
  headers: Headers,
  summary: RequestSummary,
): JsonCall {
  return {
    status: answer.status,
    headers,
    retries: sent.retries,
    kind: "json",
    body: answer.body,
    finished: Promise.resolve(summary),
    abort: () => controller.abort(),
  };
}

/** What {@link tapUpstream} needs besides the call: the dialect's parts. */
export interface TapUpstreamOptions {
  logger: Logger;
  /** The request id, for logs. */
  id: string;
  policy: StreamPolicy;
  /** Graceful shutdown's cut: the stream ends with an error event after the current one. */
  cut?: AbortSignal;
  /** The client's headers (`content-type` is set to the upstream's). */
  headers: Headers;
  /** The dialect's reader of the upstream's events (the accumulator, the chunk tap). */
  push(event: SseEvent): void;
  /** The summary, built once, when the stream is over (`outcome` when sluice knows it). */
  summarize(outcome?: string): RequestSummary;
  /** An error event in the dialect's shape. */
  sseError(type: string, message: string): string;
  /** After a clean close: the failure to end an unfinished stream with, if any. */
  closeFailure?(): CallFailure | undefined;
  /** On the client's cancel: whether the answer was whole all the same. */
  wasWhole?(): boolean;
  /** The accumulated result; `done` says whether the stream is over. */
  result(done: boolean): ReturnType<StreamCall["result"]>;
  /** Removes the server's key from the stream's bytes (`upstream.redact.chunks()`). */
  redact?: ChunkRedactor;
}

/**
 * Taps the upstream's stream on its way to the client (lib/stream/tap.ts): the dialect's reader
 * sees every event, one summary is settled when the stream ends, is cancelled or fails, and a
 * stream sluice cuts ends with the dialect's error event, whose failure the call exposes.
 * Stops watching the wait: the stream's own cancel takes over.
 */
export function tapUpstream(
  { sent, controller, waiting }: Watched,
  options: TapUpstreamOptions,
): StreamCall {
  const { logger, id, policy } = options;
  const once = summaryOnce();
  const decoder = upstreamDecoder((event) => options.push(event), policy, logger, id);
  let failure: CallFailure | undefined;
  const finish = (outcome?: string) =>
    once.settle(() => {
      decoder.end();
      return options.summarize(outcome);
    });
  const ending = (written: CallFailure, prefix: string) => {
    failure = written;
    return new TextEncoder().encode(prefix + options.sseError(written.type, written.message));
  };
  const stream = tapStream(
    sent.response.body!,
    {
      onChunk: (chunk) => decoder.feed(chunk),
      onClose: (state) => {
        finish();
        const unfinished = options.closeFailure?.();
        return unfinished ? ending(unfinished, state.atEventBoundary ? "" : "\n\n") : undefined;
      },
      onCancel: (reason) => {
        // Abort first: the upstream stops generating (and billing) before anything else runs.
        controller.abort();
        if (options.wasWhole?.()) finish();
        else finish(reason instanceof ServerShutdownError ? "incomplete" : "client_aborted");
      },
      onError: (error, state) => {
        controller.abort();
        const cut = cutStreamFailure(error, state, logger, id);
        finish("incomplete");
        // The client must not mistake a cut stream for a finished one: end with an error event.
        return ending(cut.failure, cut.prefix);
      },
    },
    (error) => logger.error("stream observer failed", { id, error: String(error) }),
    {
      idleTimeoutMs: policy.idleTimeoutMs,
      keepAliveMs: policy.keepAliveMs,
      cut: options.cut,
      redact: options.redact,
    },
  );
  options.headers.set("content-type", sent.response.headers.get("content-type") ?? "");
  waiting.unwatch();
  return {
    status: sent.response.status,
    headers: options.headers,
    retries: sent.retries,
    kind: "stream",
    stream,
    result: () => options.result(once.done),
    failure: () => failure,
    finished: once.finished,
    abort: (reason) => controller.abort(reason),
  };
}

/** A summary that is settled once: later calls of `settle` do nothing. */
function summaryOnce(): {
  finished: Promise<RequestSummary>;
  /** Whether the summary was settled already. */
  readonly done: boolean;
  /** Settles with what `build` returns, unless settled already (`build` is not called then). */
  settle(build: () => RequestSummary): void;
} {
  let resolve!: (summary: RequestSummary) => void;
  const finished = new Promise<RequestSummary>((r) => (resolve = r));
  let done = false;
  return {
    finished,
    get done() {
      return done;
    },
    settle(build) {
      if (done) return;
      done = true;
      resolve(build());
    },
  };
}

/** The SSE decoder of an upstream stream; an event over the size limit is logged, unparsed. */
function upstreamDecoder(
  push: (event: SseEvent) => void,
  policy: StreamPolicy,
  logger: Logger,
  id: string,
): ReturnType<typeof createSseDecoder> {
  return createSseDecoder(push, {
    maxEventChars: policy.maxEventChars,
    onOverflow: () =>
      logger.warn("an upstream SSE event over the size limit was passed on unparsed", {
        id,
        maxEventChars: policy.maxEventChars,
      }),
  });
}

/**
 * What a stream cut by `error` (the tap's `onError`) ends with: logged unless it is the
 * shutdown's cut, and said to the client as an `api_error`. `prefix` ends an event the cut
 * interrupted: a blank line first ends it (two line feeds work after any ending).
 */
function cutStreamFailure(
  error: unknown,
  state: { atEventBoundary: boolean },
  logger: Logger,
  id: string,
): { failure: CallFailure; prefix: string } {
  const shutdown = error instanceof ServerShutdownError;
  if (!shutdown) logger.warn("upstream stream failed", { id, error: String(error) });
  const message = shutdown
    ? error.message
    : error instanceof UpstreamIdleError
    ? `the upstream sent nothing for ${error.idleMs} ms; the answer is incomplete`
    : "the upstream connection dropped mid-stream; the answer is incomplete";
  return {
    failure: { type: "api_error", message },
    prefix: state.atEventBoundary ? "" : "\n\n",
  };
}

/**
 * What the client gets when the upstream's headers came but its body did not (`error` from
 * `readBody` or {@link readBodyWithin}): a clear 5xx in Anthropic's shape, never a 500 or a
 * truncated document.
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
        error.whole
          ? `the upstream did not send its whole answer within ${error.idleMs} ms`
          : `the upstream sent nothing for ${error.idleMs} ms while sending its answer`,
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

/** `value` as JSON bytes. */
export function jsonBytes(value: unknown): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(JSON.stringify(value));
}

/** `body` parsed as JSON when it is an object (or array), else null. */
export function safeParse(body: Uint8Array): Record<string, unknown> | null {
  try {
    const value = JSON.parse(new TextDecoder().decode(body));
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

/** The `error.type` of an error body in either dialect, if it has one. */
export function errorTypeOf(body: Record<string, unknown> | null): string | null {
  const error = body?.error as { type?: unknown } | undefined;
  return typeof error?.type === "string" ? error.type : null;
}

/** `body[key]` when it is a string. */
export function stringField(body: Record<string, unknown> | null, key: string): string | null {
  const value = body?.[key];
  return typeof value === "string" ? value : null;
}
