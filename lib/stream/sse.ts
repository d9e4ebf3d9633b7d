/**
 * Server-sent events: decoding a byte stream into events, and where event boundaries fall (the
 * tap that forwards bytes is lib/stream/tap.ts).
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
  /**
   * Most characters the decoder holds for one event (its `data` so far and the line being
   * read); an event that grows past it is dropped, not dispatched, and `onOverflow` is called.
   * Unset: no bound (trusted input, such as a fixture file).
   */
  maxEventChars?: number;
  /** An event grew past `maxEventChars` and was dropped. */
  onOverflow?: () => void;
}

/** Creates a decoder that calls `onEvent` for every complete event. */
export function createSseDecoder(
  onEvent: (event: SseEvent) => void,
  options: SseDecoderOptions = {},
): SseDecoder {
  // Hand-written around TextDecoder rather than `decode(chunk, { stream: true })`: in Deno the
  // streaming form costs about 2.5x a one-shot decode per call (the profile in docs/performance.md), and
  // this runs once per chunk of every stream. Each chunk is decoded in one shot up to its last
  // complete character; an incomplete trailing sequence (at most 3 bytes) is carried over to
  // the next chunk, which yields exactly the streaming decoder's text.
  // `ignoreBOM`: a one-shot decode would strip U+FEFF from the start of every chunk; the
  // stream's own leading BOM is stripped by eventsource-parser.
  const text = new TextDecoder("utf-8", { ignoreBOM: true });
  // eventsource-parser bounds its own buffer: past `maxBufferSize` it reports the overflow,
  // drops what it held and stops until reset; the decoder resets it at once, so the rest of the
  // stream is parsed (the rest of the oversized line then parses as no known field).
  let overflowed = false;
  const parser = createParser({
    onEvent,
    onComment: options.onComment,
    maxBufferSize: options.maxEventChars,
    onError: (error) => {
      if (error.type === "max-buffer-size-exceeded") overflowed = true;
    },
  });
  const feedParser = (text: string) => {
    parser.feed(text);
    if (!overflowed) return;
    overflowed = false;
    parser.reset();
    options.onOverflow?.();
  };
  let carry: Uint8Array | undefined;
  return {
    feed(chunk) {
      let bytes = chunk;
      if (carry) {
        bytes = new Uint8Array(carry.length + chunk.length);
        bytes.set(carry);
        bytes.set(chunk, carry.length);
        carry = undefined;
      }
      const complete = completeUtf8Length(bytes);
      if (complete < bytes.length) carry = bytes.slice(complete);
      if (complete === 0) return;
      feedParser(text.decode(complete === bytes.length ? bytes : bytes.subarray(0, complete)));
    },
    end() {
      // A character cut off by the end of the stream becomes U+FFFD, as the streaming decoder's
      // final flush would make it.
      if (carry) feedParser(text.decode(carry));
      carry = undefined;
      // Deliberately no `parser.reset({ consume: true })`: an event that never got its blank
      // line is incomplete, and the SSE spec (and the SDK) drop it.
    },
  };
}

/**
 * The length of the prefix of `bytes` that ends on a character boundary: everything but a
 * trailing UTF-8 sequence whose lead byte is present and whose continuation bytes are not yet.
 * Cutting there never changes the decoded text: a lead byte (>= 0xC0) is never a continuation,
 * so whatever precedes it decodes the same whether the rest follows or not.
 */
export function completeUtf8Length(bytes: Uint8Array): number {
  const n = bytes.length;
  for (let i = n - 1; i >= 0 && i >= n - 3; i--) {
    const byte = bytes[i];
    if (byte < 0x80) return n; // ASCII: nothing is pending
    if (byte >= 0xc0) {
      const length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : 2;
      return n - i < length ? i : n;
    }
    // 0x80..0xBF: a continuation byte; its lead byte is further back.
  }
  return n;
}

/** Decodes a whole byte sequence into its events (replay tooling and tests). */
export function decodeAll(bytes: Uint8Array): SseEvent[] {
  const events: SseEvent[] = [];
  const decoder = createSseDecoder((event) => events.push(event));
  decoder.feed(bytes);
  decoder.end();
  return events;
}

/**
 * Tracks whether the bytes seen so far end exactly at an event boundary (a blank line), so a
 * stream that must be ended early knows whether a clean `event: error` can follow.
 */
export function createBoundaryTracker() {
  // The last four bytes seen, newest in the low byte (0 where none yet); enough to recognise
  // \n\n, \r\r and \r\n\r\n. Kept in one number: `see` runs on every chunk, and the
  // array version allocated three arrays each time.
  let tail = 0;
  let seenAny = false;
  return {
    see(chunk: Uint8Array) {
      if (chunk.length === 0) return;
      seenAny = true;
      for (let i = Math.max(0, chunk.length - 4); i < chunk.length; i++) {
        tail = ((tail << 8) | chunk[i]) >>> 0;
      }
    },
    atBoundary(): boolean {
      if (!seenAny) return true;
      const last2 = tail & 0xffff;
      return last2 === 0x0a0a || last2 === 0x0d0d || tail === 0x0d0a0d0a;
    },
  };
}
