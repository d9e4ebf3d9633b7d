/**
 * One `POST /v1/chat/completions` call through sluice: the caller's body goes to the upstream's
 * OpenAI-compatible endpoint byte for byte (replay answers it from the fixtures, see
 * openai_replay.ts), and its answer comes back byte for byte while a tap reads the
 * `chat.completion.chunk` events for stats.
 *
 * The same flow as messages_call.ts `startCall` (abort while waiting, the tapped byte path, the
 * idle timeout and keep-alives, the shutdown cut, one summary when it is over), with what
 * differs for this dialect: the chunks are OpenAI's, so the tap is chat_completions_tap.ts
 * rather than the Messages event accumulator; upstream errors come back as the upstream sent
 * them (`rawErrors`); and the errors sluice makes itself, before or mid-stream, have OpenAI's
 * shape, which OpenAI clients parse. Kept apart from `startCall` so the Messages hot path stays
 * as it is measured.
 */
import { ServerShutdownError, shutdownRefusal } from "../errors.ts";
import { openaiErrorBody, openaiSseError } from "../errors.ts";
import type { Clock } from "../clock.ts";
import type { Logger } from "../log.ts";
import type { Call } from "../proxy/messages_call.ts";
import { unreadBody } from "../proxy/messages_call.ts";
import { clientHeaders } from "../proxy/pass_headers.ts";
import type { RequestSummary } from "../stats/request_summary.ts";
import { tokenUsage } from "../stats/request_summary.ts";
import { chatCompletionUsage, createChatCompletionsTap } from "./tap.ts";
import { createSseDecoder } from "../stream/sse.ts";
import { readBody, tapStream, UpstreamIdleError } from "../stream/tap.ts";
import type { Upstream, UpstreamRequest } from "../proxy/upstream.ts";
import { watchWaiting } from "../proxy/waiting.ts";

/** The path, on sluice and upstream alike. */
export const CHAT_COMPLETIONS_PATH = "/v1/chat/completions";

/** Options for {@link startChatCompletionsCall}. */
export interface ChatCompletionsCallOptions {
  upstream: Upstream;
  clock: Clock;
  logger: Logger;
  /** Request arrival on `clock`, for TTFT. */
  startedAt: number;
  /**
   * The caller's body, path with its query string ({@link CHAT_COMPLETIONS_PATH} by default),
   * API headers and how to present the server's key; the method and error mode are set here.
   */
  request: Omit<UpstreamRequest, "signal" | "method" | "rawErrors">;
  requestId: string;
  /** The body's `model`, for stats until the answer names one. */
  model: string | null;
  keyId?: string;
  /** As in messages_call.ts: aborts the upstream call while the answer is not handed over yet. */
  clientSignal?: AbortSignal;
  /** As in messages_call.ts: graceful shutdown ends a running stream with an error chunk. */
  cut?: AbortSignal;
}

/** Sends the request upstream and prepares the answer for the client. */
export async function startChatCompletionsCall(options: ChatCompletionsCallOptions): Promise<Call> {
  const { clock, startedAt } = options;
  const controller = new AbortController();
  const upstreamStartedAt = clock.now();
  const waiting = watchWaiting(controller, options.clientSignal, options.cut);
  const unwatch = () => waiting.unwatch();
  const base = {
    endpoint: CHAT_COMPLETIONS_PATH,
    streaming: options.request.stream,
    model: options.model,
    startedAt,
    keyId: options.keyId,
  };
  let sent: Awaited<ReturnType<Upstream["send"]>>;
  try {
    sent = await options.upstream.send({
      ...options.request,
      path: options.request.path ?? CHAT_COMPLETIONS_PATH,
      method: "POST",
      rawErrors: true,
      signal: controller.signal,
    });
  } catch (error) {
    unwatch();
    if (waiting.cause === "shutdown") throw shutdownRefusal();
    if (waiting.cause !== "client") throw error;
    return clientGone(options, base);
  }
  const { response, retries } = sent;
  const headers = clientHeaders(response.headers);
  const id = response.headers.get("request-id") ?? response.headers.get("x-request-id") ??
    options.requestId;
  const summaryBase = { ...base, id, status: response.status, retries };
  const contentType = response.headers.get("content-type") ?? "";
  const isStream = response.ok && contentType.includes("text/event-stream") && response.body;
  const policy = options.upstream.streamPolicy;

  if (!isStream) {
    let status = response.status;
    let body: Uint8Array<ArrayBuffer>;
    let failure: string | undefined;
    try {
      body = options.upstream.redact.bytes(
        await readBody(response.body, policy.idleTimeoutMs, controller.signal),
      );
    } catch (error) {
      unwatch();
      if (waiting.cause === "shutdown") throw shutdownRefusal();
      if (waiting.cause === "client") return clientGone(options, base);
      options.logger.warn("upstream body failed", { id, error: String(error) });
      const unread = unreadBody(error, id);
      status = unread.status;
      failure = "incomplete";
      body = jsonBytes(openaiErrorBody(unread.body.error.type, unread.body.error.message));
      headers.set("content-type", "application/json");
    }
    let parsed = failure ? null : safeParse(body);
    if (!failure && sent.local) {
      // sluice's own answer for a timeout or a failed connection: said in this endpoint's shape.
      const error = (parsed?.error ?? {}) as { type?: string; message?: string };
      parsed = {
        ...openaiErrorBody(error.type ?? "api_error", error.message ?? "upstream failed"),
      };
      body = jsonBytes(parsed);
      headers.set("content-type", "application/json");
    }
    if (!failure && response.ok && !parsed) {
      options.logger.warn("upstream answer is not JSON", { id, contentType });
      status = 502;
      failure = "incomplete";
      body = jsonBytes(openaiErrorBody(
        "api_error",
        "the upstream answered 200 with a body that is not a JSON chat completion",
      ));
      headers.set("content-type", "application/json");
    }
    const endedAt = clock.now();
    const choice = firstChoice(parsed);
    const finished: RequestSummary = {
      ...summaryBase,
      model: (typeof parsed?.model === "string" ? parsed.model : null) ?? options.model,
      status,
      outcome: failure ?? (response.ok ? "ok" : errorTypeOf(parsed) ?? `http_${response.status}`),
      ttftMs: endedAt - startedAt,
      totalMs: endedAt - startedAt,
      upstreamTtftMs: endedAt - upstreamStartedAt,
      usage: response.ok && !failure ? chatCompletionUsage(parsed?.usage) : tokenUsage(undefined),
      stopReason: typeof choice?.finish_reason === "string" ? choice.finish_reason : null,
      events: {},
    };
    if (!headers.has("content-type")) {
      headers.set("content-type", contentType || "application/json");
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
  const tap = createChatCompletionsTap({ clock });
  const decoder = createSseDecoder((event) => tap.push(event), {
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
    const result = tap.result();
    settle({
      ...summaryBase,
      model: result.model ?? options.model,
      outcome: outcome ?? (result.error ? result.error.type : result.done ? "ok" : "incomplete"),
      ttftMs: result.firstDeltaAt === null ? null : result.firstDeltaAt - startedAt,
      totalMs: clock.now() - startedAt,
      upstreamTtftMs: result.firstDeltaAt === null ? null : result.firstDeltaAt - upstreamStartedAt,
      usage: result.usage,
      stopReason: result.finishReason,
      events: result.events,
    });
  };
  const stream = tapStream(
    response.body!,
    {
      onChunk: (chunk) => decoder.feed(chunk),
      onClose: () => finish(),
      onCancel: (reason) => {
        controller.abort();
        // OpenAI clients stop reading at `[DONE]` and may cancel the body before the upstream's
        // end is seen: the answer was whole all the same.
        if (tap.result().done) finish();
        else finish(reason instanceof ServerShutdownError ? "incomplete" : "client_aborted");
      },
      onError: (error, state) => {
        controller.abort();
        const shutdown = error instanceof ServerShutdownError;
        if (!shutdown) options.logger.warn("upstream stream failed", { id, error: String(error) });
        finish("incomplete");
        // An OpenAI client must not take a cut stream for a finished one: an error chunk, which
        // the OpenAI SDKs raise as an APIError (no `[DONE]` follows).
        const prefix = state.atEventBoundary ? "" : "\n\n";
        const message = shutdown
          ? error.message
          : error instanceof UpstreamIdleError
          ? `the upstream sent nothing for ${error.idleMs} ms; the answer is incomplete`
          : "the upstream connection dropped mid-stream; the answer is incomplete";
        return new TextEncoder().encode(prefix + openaiSseError("api_error", message));
      },
    },
    (error) => options.logger.error("stream observer failed", { id, error: String(error) }),
    { idleTimeoutMs: policy.idleTimeoutMs, keepAliveMs: policy.keepAliveMs, cut: options.cut },
  );
  headers.set("content-type", contentType);
  unwatch();
  return {
    status: response.status,
    headers,
    retries,
    kind: "stream",
    stream,
    // No Messages accumulator here: the chunk tap's figures are in the summary.
    result: () => undefined,
    finished,
    abort: (reason) => controller.abort(reason),
  };
}

/** The answer for a client that left before sluice could answer (nobody reads it). */
function clientGone(
  options: ChatCompletionsCallOptions,
  base: Pick<RequestSummary, "endpoint" | "streaming" | "model" | "startedAt" | "keyId">,
): Call {
  const summary: RequestSummary = {
    ...base,
    id: options.requestId,
    outcome: "client_aborted",
    status: 499, // nginx's "client closed request"
    retries: 0,
    ttftMs: null,
    totalMs: options.clock.now() - options.startedAt,
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
    body: jsonBytes(openaiErrorBody("invalid_request_error", "the client closed the request")),
    finished: Promise.resolve(summary),
    abort: () => {},
  };
}

function jsonBytes(value: unknown): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(JSON.stringify(value));
}

function safeParse(body: Uint8Array): Record<string, unknown> | null {
  try {
    const value = JSON.parse(new TextDecoder().decode(body));
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

function firstChoice(body: Record<string, unknown> | null): Record<string, unknown> | undefined {
  const choices = body?.choices;
  const first = Array.isArray(choices) ? choices[0] : undefined;
  return first && typeof first === "object" ? first : undefined;
}

function errorTypeOf(body: Record<string, unknown> | null): string | null {
  const error = body?.error as { type?: unknown } | undefined;
  return typeof error?.type === "string" ? error.type : null;
}
