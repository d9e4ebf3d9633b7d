/**
 * Server-sent events: decoding a byte stream into events, and the tap that forwards bytes to the
 * client before anything looks at them.
 *
 * Decoding is `eventsource-parser` (LF, CRLF and CR line endings, `:` comments, multi-line
 * `data:`, `id:`/`retry:`, a leading BOM, and an unterminated final event dropped as the WHATWG
 * spec says). This module only adds streaming UTF-8 decoding, so a multi-byte character split
 * across chunks arrives whole.
 */
import { createParser, type EventSourceMessage } from "eventsource-parser";

/** One decoded SSE event: `event` is the `event:` field (undefined when absent). */
export type SseEvent = EventSourceMessage;

/** Decodes SSE bytes, chunk by chunk, into events. */
export interface SseDecoder {
  /** Feeds the next chunk; chunk boundaries may fall anywhere, even inside a character. */
  feed(chunk: Uint8Array): void;
  /** Ends the stream. An event without its terminating blank line is dropped, never dispatched. */
  end(): void;
}

/** Options for {@link createSseDecoder}. */
export interface SseDecoderOptions {
  /** Called for each `:` comment line (keep-alives, for example). */
  onComment?: (comment: string) => void;
}

/** Creates a decoder that calls `onEvent` for every complete event. */
export function createSseDecoder(
  onEvent: (event: SseEvent) => void,
  options: SseDecoderOptions = {},
): SseDecoder {
  const text = new TextDecoder("utf-8");
  const parser = createParser({ onEvent, onComment: options.onComment });
  return {
    feed(chunk) {
      const decoded = text.decode(chunk, { stream: true });
      if (decoded) parser.feed(decoded);
    },
    end() {
      const rest = text.decode();
      if (rest) parser.feed(rest);
      // Deliberately no `parser.reset({ consume: true })`: an event that never got its blank
      // line is incomplete, and the SSE spec (and the SDK) drop it.
    },
  };
}

/** Decodes a whole byte sequence into its events (replay tooling and tests). */
export function decodeAll(bytes: Uint8Array): SseEvent[] {
  const events: SseEvent[] = [];
  const decoder = createSseDecoder((event) => events.push(event));
  decoder.feed(bytes);
  decoder.end();
  return events;
}

/** What the tap reports while it forwards a stream. All hooks run after the bytes are enqueued. */
export interface TapHooks {
  /** A chunk was handed to the client. */
  onChunk(chunk: Uint8Array): void;
  /** The upstream body ended normally. */
  onClose(): void;
  /** The client went away (the response body was cancelled). */
  onCancel(reason: unknown): void;
  /**
   * Reading the upstream failed (connection lost, idle timeout). May return bytes to send the
   * client as the stream's last words (an SSE `error` event), or nothing.
   */
  onError(error: unknown, state: { atEventBoundary: boolean }): Uint8Array | undefined;
}

/**
 * Forwards `upstream` to the client unchanged and in order, one chunk at a time as it arrives,
 * then reports each chunk to `hooks`. The client's bytes never wait on parsing or accounting: a
 * hook that throws is reported to `onHookError` and the bytes keep flowing.
 *
 * Written by hand rather than with a `TransformStream` because the tap must see the client's
 * cancel (to abort the upstream request) and read failures (to close the stream with an error
 * event), which a pull-based `ReadableStream` exposes directly.
 */
export function tapStream(
  upstream: ReadableStream<Uint8Array>,
  hooks: TapHooks,
  onHookError: (error: unknown) => void = () => {},
): ReadableStream<Uint8Array> {
  const reader = upstream.getReader();
  const boundary = createBoundaryTracker();
  let finished = false;
  const safely = (fn: () => void) => {
    try {
      fn();
    } catch (error) {
      onHookError(error);
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await reader.read();
      } catch (error) {
        if (finished) return;
        finished = true;
        let last: Uint8Array | undefined;
        safely(() => {
          last = hooks.onError(error, { atEventBoundary: boundary.atBoundary() });
        });
        if (last) controller.enqueue(last);
        controller.close();
        return;
      }
      if (finished) return;
      if (result.done) {
        finished = true;
        controller.close();
        safely(() => hooks.onClose());
        return;
      }
      const chunk = result.value;
      controller.enqueue(chunk);
      boundary.see(chunk);
      safely(() => hooks.onChunk(chunk));
    },
    cancel(reason) {
      if (finished) return;
      finished = true;
      safely(() => hooks.onCancel(reason));
      return reader.cancel(reason).catch(() => {});
    },
  }, { highWaterMark: 0 });
}

/**
 * Tracks whether the bytes seen so far end exactly at an event boundary (a blank line), so a
 * stream that must be ended early knows whether a clean `event: error` can follow.
 */
export function createBoundaryTracker() {
  // The last up to four bytes seen; enough to recognise \n\n, \r\r and \r\n\r\n.
  let tail: number[] = [];
  let seenAny = false;
  return {
    see(chunk: Uint8Array) {
      if (chunk.length === 0) return;
      seenAny = true;
      const take = Math.min(4, chunk.length);
      tail = tail.concat(Array.from(chunk.subarray(chunk.length - take))).slice(-4);
    },
    atBoundary(): boolean {
      if (!seenAny) return true;
      const s = String.fromCharCode(...tail);
      return s.endsWith("\n\n") || s.endsWith("\r\r") || s.endsWith("\r\n\r\n");
    },
  };
}
