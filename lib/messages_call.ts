/**
 * One Messages call through sluice: send upstream, then hand the client the upstream's answer
 * while the accumulator watches it. Both `/v1/messages` (bytes as they are) and `/chat` (a view
 * of the same stream) are built on this.
 *
 * The byte path: upstream body → `tapStream` (enqueue to the client first) → SSE decoder →
 * accumulator → observers. Nothing on that path awaits stats; the summary is delivered once, by
 * `finished`, after the response has ended.
 */
import type { AccumulatorObserver, StreamResult } from "./accumulator.ts";
import { EventAccumulator } from "./accumulator.ts";
import type { Clock } from "./clock.ts";
import { sseErrorEvent } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { RequestSummary } from "./request_summary.ts";
import { tokenUsage } from "./request_summary.ts";
import { createSseDecoder, tapStream } from "./sse.ts";
import type { Upstream, UpstreamRequest } from "./upstream.ts";

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
}

/** The upstream's answer, ready for the client. */
export interface Call {
  status: number;
  /** Upstream headers worth passing on (`request-id`, rate-limit headers, …). */
  headers: Headers;
  retries: number;
  /** `stream`: an SSE body, tapped; `json`: a whole body (a message or an error). */
  kind: "stream" | "json";
  /** For `stream`: the client's byte stream. */
  stream?: ReadableStream<Uint8Array>;
  /** For `json`: the body bytes. */
  body?: Uint8Array<ArrayBuffer>;
  /** The accumulated result (streams only), available once `finished` resolves. */
  result?: () => StreamResult | undefined;
  /** Resolves once, when the response is over (completed, failed or abandoned). */
  finished: Promise<RequestSummary>;
  /** Stops the upstream request. */
  abort(reason?: unknown): void;
}

const PASS_HEADERS =
  /^(request-id|retry-after|retry-after-ms|x-should-retry|anthropic-ratelimit-.*|anthropic-organization-id|anthropic-workspace-id|x-sluice-fixture)$/i;

/** Sends the request upstream and prepares the answer for the client. */
export async function startCall(options: CallOptions): Promise<Call> {
  const { clock, startedAt } = options;
  const controller = new AbortController();
  const upstreamStartedAt = clock.now();
  const { response, retries } = await options.upstream.send({
    ...options.request,
    signal: controller.signal,
  });
  const headers = new Headers();
  response.headers.forEach((value, key) => {
    if (PASS_HEADERS.test(key)) headers.set(key, value);
  });
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

  if (!isStream) {
    const body = new Uint8Array(await response.arrayBuffer());
    const endedAt = clock.now();
    const parsed = safeParse(body);
    const finished: RequestSummary = {
      ...base,
      streaming: options.request.stream,
      model: (typeof parsed?.model === "string" ? parsed.model : null) ?? options.model,
      outcome: response.ok ? "ok" : errorTypeOf(parsed) ?? `http_${response.status}`,
      ttftMs: endedAt - startedAt,
      totalMs: endedAt - startedAt,
      upstreamTtftMs: endedAt - upstreamStartedAt,
      usage: tokenUsage(response.ok ? parsed?.usage : undefined),
      stopReason: typeof parsed?.stop_reason === "string" ? parsed.stop_reason : null,
      events: {},
    };
    if (!headers.has("content-type")) {
      headers.set("content-type", contentType || "application/json");
    }
    return {
      status: response.status,
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
  const decoder = createSseDecoder((event) => accumulator.push(event));
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
      usage: tokenUsage(message?.usage),
      stopReason: typeof message?.stop_reason === "string" ? message.stop_reason : null,
      events: result.events,
    });
  };
  const stream = tapStream(response.body!, {
    onChunk: (chunk) => decoder.feed(chunk),
    onClose: () => finish(),
    onCancel: () => {
      controller.abort();
      finish("client_aborted");
    },
    onError: (error, state) => {
      options.logger.warn("upstream stream failed", { id, error: String(error) });
      finish("incomplete");
      // The client must not mistake a cut stream for a finished one: end with an error event.
      const prefix = state.atEventBoundary ? "" : "\n";
      return new TextEncoder().encode(
        prefix + sseErrorEvent("api_error", "the upstream stream ended unexpectedly"),
      );
    },
  }, (error) => options.logger.error("stream observer failed", { id, error: String(error) }));
  headers.set("content-type", contentType);
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
