/**
 * `/chat`'s view of a streamed Messages call: the accumulator's text deltas re-encoded as plain
 * text or small SSE events, then a final `done` (or `error`).
 *
 * The view is pull-based like the tap under it: each pull reads one chunk of the tapped upstream
 * stream (whose hooks run the accumulator, which calls this view's observer), then hands the
 * client whatever text that chunk produced. So text is flushed as it arrives, the upstream is
 * read only as fast as the client takes the answer, and a client that goes away cancels the tap,
 * which aborts the upstream request.
 */
import type { AccumulatorObserver, Message } from "../stream/accumulator.ts";
import type { ChatDone } from "./encoding.ts";
import type { PriceTable } from "../stats/prices.ts";
import { withCost } from "../stats/cost.ts";
import { concatBytes } from "../bytes.ts";
import { errorLine, errorPayload, sseEvent, statsLine } from "./encoding.ts";
import type { Call, StreamCall } from "../proxy/messages_call.ts";
import { KEEP_ALIVE_COMMENT } from "../stream/tap.ts";
import type { StreamWriter } from "./resume.ts";
import { CHUNK_BYTES } from "./resume.ts";

/** Options for {@link createChatView}. */
export interface ChatViewOptions {
  format: "text" | "sse";
  /** Plain text only: end with the stats line. */
  withStats?: boolean;
  /** sluice's request id, used until the upstream's is known. */
  requestId: string;
  conversationId?: string | null;
  /**
   * Called once with the complete message before `done` is sent (so a client that sends its next
   * message on `done` finds the history stored). Returns whether it was stored; never called for
   * a failed or cancelled answer.
   */
  onComplete?: (message: Message) => Promise<boolean>;
  /** Reports a failure of `onComplete`; the answer still ends normally, with `stored: false`. */
  onCompleteError?: (error: unknown) => void;
  /**
   * When the client leaves mid-answer: `finish` (default) reads the upstream to its end, so
   * the answer is stored and its usage recorded; `abort` stops the upstream call at once.
   */
  onDisconnect?: "finish" | "abort";
  /** Prices the answer for `done` (its `cost_usd`); without it `cost_usd` is null. */
  prices?: PriceTable;
  /**
   * SSE only: a resumable stream's writer. Every event then gets an `id:` line and is buffered
   * for `GET /chat/streams/{id}`.
   */
  writer?: StreamWriter;
  /**
   * Cleans the upstream's words that the view re-encodes (an `error` event's type and message)
   * of the server's key; the answer's text is the payload and passes as it is.
   */
  redact?: (text: string) => string;
}

/** A view: attach `observer` to the call, then serve `body(call)`. */
export interface ChatView {
  observer: AccumulatorObserver;
  body(call: StreamCall): ReadableStream<Uint8Array>;
  /**
   * Stops the answer on its client's request (a Stop button), whatever the disconnect policy:
   * the upstream call is aborted, nothing is stored, and the stream ends with an `error` event.
   * False when the answer had already ended (or has no body yet).
   */
  stop(): Promise<boolean>;
}

/** The text of a message's text blocks. */
export function messageText(message: Pick<Message, "content"> | null | undefined): string {
  return (message?.content ?? [])
    .map((block) => (block.type === "text" ? block.text : ""))
    .join("");
}

/** Builds the `done` payload from a finished call. */
export async function chatDone(
  call: Call,
  fallbackRequestId: string,
  conversationId: string | null,
  outputTokensPerSecond: number | null,
  prices?: PriceTable,
): Promise<ChatDone> {
  const summary = await call.finished;
  return {
    cost_usd: prices ? withCost(summary, prices).costUsd ?? null : null,
    request_id: call.headers.get("request-id") ?? fallbackRequestId,
    conversation_id: conversationId,
    model: summary.model,
    stop_reason: summary.stopReason,
    usage: summary.usage,
    ttft_ms: summary.ttftMs,
    total_ms: summary.totalMs,
    output_tokens_per_second: outputTokensPerSecond,
  };
}

const KEEP_ALIVE = ": keep-alive\n\n";

/**
 * A text delta as `text` events each small enough for one KV chunk (a delta is a few bytes in
 * practice; a huge one is split at a character boundary rather than break the chunk bound).
 */
function textEvents(delta: string): string[] {
  const event = sseEvent("text", { text: delta });
  // UTF-16 length x 3 bounds the UTF-8 length; the id line is far under the headroom.
  if (event.length * 3 <= CHUNK_BYTES - 64 || delta.length < 2) return [event];
  let half = Math.floor(delta.length / 2);
  const code = delta.charCodeAt(half - 1);
  if (code >= 0xd800 && code <= 0xdbff) half++; // never split a surrogate pair
  return [...textEvents(delta.slice(0, half)), ...textEvents(delta.slice(half))];
}

/** Creates the view of one `/chat` answer. */
export function createChatView(options: ChatViewOptions): ChatView {
  // The text not sent yet; the observer adds to it, the answer's steps take it.
  const pending: string[] = [];
  let lastText = "";

  const observer: AccumulatorObserver = {
    onText(delta) {
      if (delta === "") return;
      lastText = delta;
      if (options.format !== "sse") pending.push(delta);
      else if (options.writer) pending.push(...textEvents(delta));
      else pending.push(sseEvent("text", { text: delta }));
    },
  };

  let stopBody: (() => Promise<boolean>) | undefined;

  function body(call: StreamCall): ReadableStream<Uint8Array> {
    const steps = answerSteps(call, options, pending, () => lastText);
    const answer = answerStream(call, options, pending, steps);
    stopBody = answer.stop;
    return answer.stream;
  }

  return { observer, body, stop: () => stopBody?.() ?? Promise.resolve(false) };
}

/** An upstream failure as the final event (SSE) or the marked line (plain text). */
function failure(
  options: ChatViewOptions,
  lastText: string,
  upstreamType: string,
  upstreamMessage: string,
): string {
  const type = options.redact ? options.redact(upstreamType) : upstreamType;
  const message = options.redact ? options.redact(upstreamMessage) : upstreamMessage;
  if (options.format === "sse") return sseEvent("error", errorPayload(type, message));
  // The marked line starts on a line of its own, after whatever text came before it.
  const gap = lastText === "" || lastText.endsWith("\n") ? "" : "\n";
  return `${gap}${errorLine(type, message)}`;
}

/**
 * The answer's final event once the tapped stream has ended: `done` (after `onComplete`) for a
 * complete answer, else the failure (for a cut or silent stream, the one the tap reported).
 */
async function finalEvent(
  call: StreamCall,
  options: ChatViewOptions,
  lastText: () => string,
): Promise<string> {
  const result = call.result();
  if (result?.error) return failure(options, lastText(), result.error.type, result.error.message);
  if (!result?.complete || !result.message) {
    // The tap ended a cut or silent stream with its own error event (not part of the upstream's
    // answer, so the accumulator never saw it): keep its explanation.
    const reported = call.failure();
    return failure(
      options,
      lastText(),
      reported?.type ?? "api_error",
      reported?.message ?? "the upstream stream ended before the answer was complete",
    );
  }
  const done = await chatDone(
    call,
    options.requestId,
    options.conversationId ?? null,
    result.metrics.outputTokensPerSecond,
    options.prices,
  );
  if (options.onComplete) {
    try {
      done.stored = await options.onComplete(result.message);
    } catch (error) {
      options.onCompleteError?.(error);
      done.stored = false;
    }
  }
  if (options.format === "sse") return sseEvent("done", done);
  const newline = lastText() === "" || lastText().endsWith("\n") ? "" : "\n";
  return newline + (options.withStats ? statsLine(done) : "");
}

/** How an answer's stream, its drain after a disconnect and its Stop move the answer on. */
interface AnswerSteps {
  /** Runs one more read of the tapped stream, after the ones already started. */
  next(): Promise<void>;
  /** The pending events as bytes: numbered and buffered when the stream is resumable. */
  take(): Uint8Array | null;
  /** Aborts the upstream and ends a resumable stream with an error event saying why. */
  abortAnswer(reason: unknown, why: string): Promise<Uint8Array | null>;
  /** Whether the tapped stream has ended (the final event is pending or sent). */
  readonly ended: boolean;
}

/** The reads of one answer's tapped stream, turning what they produce into pending events. */
function answerSteps(
  call: StreamCall,
  options: ChatViewOptions,
  pending: string[],
  lastText: () => string,
): AnswerSteps {
  const encoder = new TextEncoder();
  const reader = call.stream.getReader();
  let ended = false;
  const finish = () => finalEvent(call, options, lastText);

  const writer = options.format === "sse" ? options.writer : undefined;
  let finalTaken = false;
  /** One read of the tapped stream; its text (and, at the end, the final event) is pending. */
  async function step(): Promise<void> {
    const { done, value } = await reader.read();
    if (done) {
      ended = true;
      pending.push(await finish());
    } else if (value === KEEP_ALIVE_COMMENT && options.format === "sse") {
      // The tap's keep-alive while the upstream is silent: pass it on, so proxies keep
      // the browser's stream open too. (Plain text has no comment to send.)
      pending.push(KEEP_ALIVE);
    }
  }
  function take(): Uint8Array | null {
    const events = pending.splice(0);
    if (events.length === 0) return null;
    if (!writer) {
      const text = events.join("");
      return text === "" ? null : encoder.encode(text);
    }
    const parts: Uint8Array[] = [];
    for (const event of events) {
      if (event === "") continue;
      // Keep-alives are not events: no id, nothing to replay.
      parts.push(event === KEEP_ALIVE ? KEEP_ALIVE_COMMENT : writer.push(event));
    }
    if (ended && !finalTaken) {
      finalTaken = true;
      writer.end();
    }
    return parts.length === 0 ? null : concatBytes(parts);
  }
  // Steps run one at a time: a drain that takes over after a cancel waits for the pull's.
  let stepping: Promise<void> = Promise.resolve();
  const next = () => (stepping = stepping.then(step));

  async function abortAnswer(reason: unknown, why: string): Promise<Uint8Array | null> {
    await reader.cancel(reason);
    if (!writer || finalTaken) return null;
    pending.splice(0, pending.length, sseEvent("error", errorPayload("api_error", why)));
    ended = true;
    return take();
  }

  return {
    next,
    take,
    abortAnswer,
    get ended() {
      return ended;
    },
  };
}

/** The client's stream of one answer, and its Stop. */
function answerStream(
  call: StreamCall,
  options: ChatViewOptions,
  pending: string[],
  steps: AnswerSteps,
): { stream: ReadableStream<Uint8Array>; stop: () => Promise<boolean> } {
  const writer = options.format === "sse" ? options.writer : undefined;
  const finishOnDisconnect = (options.onDisconnect ?? "finish") === "finish";
  let cancelled = false;
  let stopped = false;
  let client: ReadableStreamDefaultController<Uint8Array> | undefined;

  async function stop(): Promise<boolean> {
    // Also after the client left (a Stop pressed while reconnecting): the drain stops too.
    if (stopped || steps.ended) return false;
    stopped = cancelled = true;
    const bytes = await steps.abortAnswer("stopped by the client", "the client stopped the answer");
    // A client still connected gets the final event too, then the end of the stream.
    try {
      if (bytes) client?.enqueue(bytes);
      client?.close();
    } catch {
      // the client had already gone
    }
    return true;
  }

  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      client = controller;
      if (options.format === "sse") {
        const requestId = call.headers.get("request-id") ?? options.requestId;
        pending.push(sseEvent("start", {
          request_id: requestId,
          conversation_id: options.conversationId ?? null,
          ...(writer ? { stream_id: writer.id } : {}),
        }));
        const bytes = steps.take();
        if (bytes) controller.enqueue(bytes);
      }
    },
    async pull(controller) {
      while (pending.length === 0 && !steps.ended) {
        await steps.next();
        if (cancelled) return;
      }
      if (cancelled) return;
      const bytes = steps.take();
      if (bytes) controller.enqueue(bytes);
      if (steps.ended) controller.close();
    },
    async cancel(reason) {
      if (stopped) return;
      cancelled = true;
      if (finishOnDisconnect && !steps.ended) {
        // The client went away, but the answer is paid for: read it to its end (the
        // accumulator, the conversation and the stats see all of it, and a resuming client
        // gets it from KV). The upstream is read as fast as it sends now.
        drain(steps).catch((error) => options.onCompleteError?.(error));
        return;
      }
      // `abort`: cancelling the tap aborts the upstream request, and nothing of this answer
      // is stored; a resumable stream ends with an error event that says why.
      await steps.abortAnswer(
        reason,
        "the client disconnected and SLUICE_ON_DISCONNECT=abort stopped the answer",
      );
    },
  }, { highWaterMark: 0 });
  return { stream, stop };
}

/** Reads an answer whose client has gone to its end, dropping what it produces. */
async function drain(steps: AnswerSteps): Promise<void> {
  while (!steps.ended) {
    await steps.next();
    steps.take();
  }
  steps.take();
}
