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
 * as it is measured; the parts both flows share are in lib/proxy/call_parts.ts.
 */
import { openaiErrorBody, openaiSseError } from "../errors.ts";
import type { Clock } from "../clock.ts";
import type { Logger } from "../log.ts";
import type { Call, StreamCall } from "../proxy/messages_call.ts";
import {
  clientGoneCall,
  jsonCall,
  readWholeAnswer,
  sendWatched,
  type SummaryBase,
  tapUpstream,
  type Watched,
  wholeAnswerSummary,
} from "../proxy/call_parts.ts";
import { clientHeaders } from "../proxy/pass_headers.ts";
import type { RequestSummary } from "../stats/request_summary.ts";
import { tokenUsage } from "../stats/request_summary.ts";
import { chatCompletionUsage, createChatCompletionsTap } from "./tap.ts";
import type { Upstream, UpstreamRequest } from "../proxy/upstream.ts";

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
  const upstreamStartedAt = options.clock.now();
  const watched = await sendWatched(
    options.upstream,
    {
      ...options.request,
      path: options.request.path ?? CHAT_COMPLETIONS_PATH,
      method: "POST",
      rawErrors: true,
      requestId: options.requestId,
    },
    options.clientSignal,
    options.cut,
  );
  if (!watched) return clientGone(options);
  const { response, retries } = watched.sent;
  const base = {
    ...summaryFields(options),
    id: response.headers.get("request-id") ?? response.headers.get("x-request-id") ??
      options.requestId,
    status: response.status,
    retries,
  };
  const contentType = response.headers.get("content-type") ?? "";
  const isStream = response.ok && contentType.includes("text/event-stream") && response.body;
  const answering = { options, watched, headers: clientHeaders(response.headers), base };
  return isStream
    ? tapAnswer(answering, upstreamStartedAt)
    : await wholeAnswer(answering, upstreamStartedAt);
}

/** What the answer's two paths (whole body, stream) share once the headers came. */
interface Answering {
  options: ChatCompletionsCallOptions;
  watched: Watched;
  headers: Headers;
  base: SummaryBase & Pick<RequestSummary, "status" | "retries">;
}

/** A whole body: a chat completion, the upstream's error as it sent it, or sluice's own. */
async function wholeAnswer(
  { options, watched, headers, base }: Answering,
  upstreamStartedAt: number,
): Promise<Call> {
  const contentType = watched.sent.response.headers.get("content-type") ?? "";
  const answer = await readWholeAnswer(options.upstream, watched, {
    logger: options.logger,
    id: base.id,
    headers,
    idleTimeoutMs: options.upstream.streamPolicy.idleTimeoutMs,
    errorJson: openaiErrorBody,
    expected: "a JSON chat completion",
    // sluice's own answer for a timeout or a failed connection: said in this endpoint's shape.
    rewrite: watched.sent.local ? localError : undefined,
  });
  if (!answer) return clientGone(options);
  const { parsed } = answer;
  const ok = watched.sent.response.ok && !answer.failure;
  const choice = firstChoice(parsed);
  const summary = wholeAnswerSummary(base, answer, {
    upstreamStartedAt,
    endedAt: options.clock.now(),
  }, {
    usage: ok ? chatCompletionUsage(parsed?.usage) : tokenUsage(undefined),
    stopReason: typeof choice?.finish_reason === "string" ? choice.finish_reason : null,
  });
  if (!headers.has("content-type")) {
    headers.set("content-type", contentType || "application/json");
  }
  return jsonCall(answer, watched, headers, summary);
}

/** sluice's own error answer (Anthropic's shape), in OpenAI's. */
function localError(parsed: Record<string, unknown> | null): Record<string, unknown> {
  const error = (parsed?.error ?? {}) as { type?: string; message?: string };
  return { ...openaiErrorBody(error.type ?? "api_error", error.message ?? "upstream failed") };
}

/** A streamed answer: the upstream's chunks, tapped for stats on their way to the client. */
function tapAnswer(
  { options, watched, headers, base }: Answering,
  upstreamStartedAt: number,
): StreamCall {
  const { clock, startedAt } = options;
  const tap = createChatCompletionsTap({ clock });
  return tapUpstream(watched, {
    logger: options.logger,
    id: base.id,
    policy: options.upstream.streamPolicy,
    cut: options.cut,
    redact: options.upstream.redact.chunks(),
    headers,
    push: (event) => tap.push(event),
    summarize: (outcome) => {
      const result = tap.result();
      const firstDelta = result.firstDeltaAt;
      return {
        ...base,
        model: result.model ?? options.model,
        outcome: outcome ?? (result.error ? result.error.type : result.done ? "ok" : "incomplete"),
        ttftMs: firstDelta === null ? null : firstDelta - startedAt,
        totalMs: clock.now() - startedAt,
        upstreamTtftMs: firstDelta === null ? null : firstDelta - upstreamStartedAt,
        usage: result.usage,
        stopReason: result.finishReason,
        events: result.events,
      };
    },
    // An OpenAI client must not take a cut stream for a finished one: an error chunk, which
    // the OpenAI SDKs raise as an APIError (no `[DONE]` follows).
    sseError: openaiSseError,
    // OpenAI clients stop reading at `[DONE]` and may cancel the body before the upstream's
    // end is seen: the answer was whole all the same.
    wasWhole: () => tap.result().done,
    // No Messages accumulator here: the chunk tap's figures are in the summary.
    result: () => undefined,
  });
}

/** The summary fields the caller's request gives. */
function summaryFields(options: ChatCompletionsCallOptions): SummaryBase {
  return {
    id: options.requestId,
    endpoint: CHAT_COMPLETIONS_PATH,
    streaming: options.request.stream,
    model: options.model,
    startedAt: options.startedAt,
    keyId: options.keyId,
  };
}

/** The answer for a client that left before sluice could answer (nobody reads it). */
function clientGone(options: ChatCompletionsCallOptions): Call {
  return clientGoneCall(summaryFields(options), options.clock.now(), openaiErrorBody);
}

function firstChoice(body: Record<string, unknown> | null): Record<string, unknown> | undefined {
  const choices = body?.choices;
  const first = Array.isArray(choices) ? choices[0] : undefined;
  return first && typeof first === "object" ? first : undefined;
}
