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
import { errorLine, errorPayload, sseEvent, statsLine } from "./encoding.ts";
import type { Call, StreamCall } from "../proxy/messages_call.ts";
import type { SseEvent } from "../stream/sse.ts";
import { decodeAll, KEEP_ALIVE_COMMENT } from "../stream/sse.ts";

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
}

/** A view: attach `observer` to the call, then serve `body(call)`. */
export interface ChatView {
  observer: AccumulatorObserver;
  body(call: StreamCall): ReadableStream<Uint8Array>;
}

/** The text of a message's text blocks. */
export function messageText(message: Pick<Message, "content"> | null | undefined): string {
  return (message?.content ?? [])
    .map((block) => (block.type === "text" ? block.text : ""))
    .join("");
}

function errorOf(data: string): { type: string; message: string } | null {
  try {
    const error = JSON.parse(data)?.error;
    return typeof error?.type === "string" && typeof error?.message === "string" ? error : null;
  } catch {
    return null;
  }
}

/** Builds the `done` payload from a finished call. */
export async function chatDone(
  call: Call,
  fallbackRequestId: string,
  conversationId: string | null,
  outputTokensPerSecond: number | null,
): Promise<ChatDone> {
  const summary = await call.finished;
  return {
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

/** Creates the view of one `/chat` answer. */
export function createChatView(options: ChatViewOptions): ChatView {
  const encoder = new TextEncoder();
  const conversationId = options.conversationId ?? null;
  let pending: string[] = [];
  let lastText = "";

  const observer: AccumulatorObserver = {
    onText(delta) {
      if (delta === "") return;
      lastText = delta;
      pending.push(options.format === "sse" ? sseEvent("text", { text: delta }) : delta);
    },
  };

  function failure(type: string, message: string): string {
    if (options.format === "sse") return sseEvent("error", errorPayload(type, message));
    // The marked line starts on a line of its own, after whatever text came before it.
    const gap = lastText === "" || lastText.endsWith("\n") ? "" : "\n";
    return `${gap}${errorLine(type, message)}`;
  }

  function body(call: StreamCall): ReadableStream<Uint8Array> {
    const reader = call.stream.getReader();
    let cancelled = false;
    let ended = false;
    let tapError: SseEvent | undefined;

    async function finish(): Promise<string> {
      const result = call.result();
      if (result?.error) return failure(result.error.type, result.error.message);
      if (!result?.complete || !result.message) {
        const reported = tapError ? errorOf(tapError.data) : null;
        return failure(
          reported?.type ?? "api_error",
          reported?.message ?? "the upstream stream ended before the answer was complete",
        );
      }
      const done = await chatDone(
        call,
        options.requestId,
        conversationId,
        result.metrics.outputTokensPerSecond,
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
      const newline = lastText === "" || lastText.endsWith("\n") ? "" : "\n";
      return newline + (options.withStats ? statsLine(done) : "");
    }

    return new ReadableStream<Uint8Array>({
      start(controller) {
        if (options.format === "sse") {
          const requestId = call.headers.get("request-id") ?? options.requestId;
          controller.enqueue(
            encoder.encode(
              sseEvent("start", { request_id: requestId, conversation_id: conversationId }),
            ),
          );
        }
      },
      async pull(controller) {
        while (pending.length === 0 && !ended) {
          const { done, value } = await reader.read();
          if (cancelled) return;
          if (done) {
            ended = true;
            pending.push(await finish());
          } else if (value === KEEP_ALIVE_COMMENT && options.format === "sse") {
            // The tap's keep-alive while the upstream is silent: pass it on, so proxies keep
            // the browser's stream open too. (Plain text has no comment to send.)
            pending.push(": keep-alive\n\n");
          } else if (call.result() && !call.result()!.complete) {
            // The tap ended a cut or silent stream with its own error event (not part of the
            // upstream's answer, so the accumulator never saw it): keep its explanation.
            tapError = decodeAll(value).find((event) => event.event === "error");
          }
        }
        if (cancelled) return;
        const text = pending.join("");
        pending = [];
        if (text !== "") controller.enqueue(encoder.encode(text));
        if (ended) controller.close();
      },
      async cancel(reason) {
        // The client went away: cancelling the tap aborts the upstream request, and nothing of
        // this answer is stored.
        cancelled = true;
        await reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
  }

  return { observer, body };
}
