/**
 * The tap: forwards an upstream body to the client chunk by chunk, before anything looks at the
 * bytes, and reports each chunk, the end, a cancel or a failure to hooks that run after the
 * bytes are enqueued (the accumulator, stats, keep-alives, shutdown cuts).
 */
import { concatBytes } from "../bytes.ts";
import { createBoundaryTracker } from "./sse.ts";
import type { ChunkRedactor } from "../redact.ts";

/** What the tap reports while it forwards a stream. All hooks run after the bytes are enqueued. */
export interface TapHooks {
  /** A chunk was handed to the client. */
  onChunk(chunk: Uint8Array): void;
  /**
   * The upstream body ended normally (a clean close). May return bytes to send the client after
   * the upstream's last byte, before the stream ends (an SSE `error` event when the answer is
   * incomplete), or nothing. `atEventBoundary` is as for `onError`.
   */
  onClose(state: { atEventBoundary: boolean }): Uint8Array | undefined | void;
  /** The client went away (the response body was cancelled). */
  onCancel(reason: unknown): void;
  /**
   * Reading the upstream failed (connection lost, or {@link UpstreamIdleError} when it went
   * silent too long). May return bytes to send the client as the stream's last words (an SSE
   * `error` event), or nothing. `atEventBoundary` says whether the bytes so far end with a blank
   * line, so whether such an event can follow directly.
   */
  onError(error: unknown, state: { atEventBoundary: boolean }): Uint8Array | undefined;
}

/** Options for {@link tapStream}. */
export interface TapOptions {
  /**
   * Longest silence of the upstream, in ms, before the tap gives up on it: the upstream read is
   * cancelled and `onError` gets an {@link UpstreamIdleError}. 0 or unset: wait for ever.
   */
  idleTimeoutMs?: number;
  /**
   * After this much silence towards the client, in ms, send `keepAlive` (only between events,
   * never inside one). 0 or unset: none.
   */
  keepAliveMs?: number;
  /** The keep-alive bytes; an SSE comment by default, which every SSE parser skips. */
  keepAlive?: Uint8Array;
  /**
   * Size of the buffer each read of a byte stream (a `fetch` body) fills. Deno's own reads
   * allocate 64 KiB per pending read, which an open but quiet stream holds all along; with
   * buffers of ours an open stream holds less (measured in tests/load_test.ts: about 60 KiB of
   * buffers and 25 KiB of RSS less per open stream). Chunks larger than this arrive in several
   * reads, unchanged otherwise. Default 4096.
   */
  readBufferBytes?: number;
  /**
   * Ends the stream when it aborts (graceful shutdown's cut): the upstream read is cancelled and
   * `onError` gets the signal's reason, so its last words (an SSE `error` event) come from the
   * tap itself. This used to be a separate guard stream behind the tap; one JavaScript stream
   * layer fewer per chunk was ~5% of the gateway's CPU per event in the bench (see docs/performance.md).
   */
  cut?: AbortSignal;
  /**
   * Removes secrets (the server's key, should the upstream echo it) from the bytes before the
   * client or a hook sees them; none by default. See lib/redact.ts.
   */
  redact?: ChunkRedactor;
}

/** The part of a stream reader the tap uses. */
interface ChunkReader {
  read(): Promise<ReadableStreamReadResult<Uint8Array>>;
  cancel(reason?: unknown): Promise<void>;
}

/**
 * Reads `stream` chunk by chunk: with a BYOB reader and fresh buffers of `size` bytes when it is
 * a byte stream (fetch bodies are), else with its default reader. BYOB from the first chunk: its
 * set-up looks costly in-process (4.7% of `bench/request_cpu_bench.ts`, whose upstream body is
 * not a fetch body), but on a real fetch body the default reader's first chunks cost more: 12%
 * more CPU per stream at 10 and 100 clients in `deno task bench:request` (two runs, 2026-12-03).
 */
function chunkReader(stream: ReadableStream<Uint8Array>, size: number): ChunkReader {
  let byob: ReadableStreamBYOBReader;
  try {
    byob = stream.getReader({ mode: "byob" });
  } catch {
    return stream.getReader();
  }
  // One buffer per stream, read into again and again; what a read filled is copied out at its
  // exact size for the client. (A fresh 4 KiB buffer per read, zeroed and counted as external
  // memory by the GC, was ~4% of the gateway's main-thread time in the bench's profile.)
  let buffer = new Uint8Array(size);
  return {
    read: () =>
      byob.read(buffer).then((result) => {
        if (result.value) buffer = new Uint8Array(result.value.buffer); // handed back to us
        if (result.done) return { done: true, value: undefined };
        return { done: false, value: result.value.slice() };
      }),
    cancel: (reason) => byob.cancel(reason),
  };
}

/** The default keep-alive: an SSE comment line and a blank line (a no-op for SSE parsers). */
export const KEEP_ALIVE_COMMENT: Uint8Array = new TextEncoder().encode(": keep-alive\n\n");

/** The upstream sent nothing for longer than the idle timeout. */
export class UpstreamIdleError extends Error {
  readonly idleMs: number;
  /** The limit was on the whole body ({@link readBodyWithin}), not on a silence. */
  readonly whole: boolean;
  constructor(idleMs: number, whole = false) {
    super(
      whole
        ? `the upstream did not send its whole body within ${idleMs} ms`
        : `the upstream sent nothing for ${idleMs} ms`,
    );
    this.name = "UpstreamIdleError";
    this.idleMs = idleMs;
    this.whole = whole;
  }
}

/**
 * Forwards `upstream` to the client unchanged and in order, one chunk at a time as it arrives,
 * then reports each chunk to `hooks`. The client's bytes never wait on parsing or accounting: a
 * hook that throws is reported to `onHookError` and the bytes keep flowing.
 *
 * While the upstream is silent the tap can send keep-alive comments (at event boundaries only)
 * and give up after an idle timeout; see {@link TapOptions}.
 *
 * Written by hand rather than with a `TransformStream` because the tap must see the client's
 * cancel (to abort the upstream request), read failures (to close the stream with an error
 * event) and silence (keep-alives, idle timeout), which a pull-based `ReadableStream` exposes
 * directly.
 *
 * @example Bytes pass unchanged while a hook counts them
 * ```ts
 * import assert from "node:assert/strict";
 * import { tapStream } from "./tap.ts";
 *
 * let seen = 0;
 * const upstream = new Blob(["event: ping\ndata: {}\n\n"]).stream();
 * const client = tapStream(upstream, {
 *   onChunk: (chunk) => (seen += chunk.length),
 *   onClose: () => {},
 *   onCancel: () => {},
 *   onError: () => undefined,
 * });
 * assert.equal(await new Response(client).text(), "event: ping\ndata: {}\n\n");
 * assert.equal(seen, 22);
 * ```
 */
export function tapStream(
  upstream: ReadableStream<Uint8Array>,
  hooks: TapHooks,
  onHookError: (error: unknown) => void = () => {},
  options: TapOptions = {},
): ReadableStream<Uint8Array> {
  const tap = new Tap(
    chunkReader(upstream, options.readBufferBytes ?? 4096),
    hooks,
    onHookError,
    options,
  );
  return new ReadableStream<Uint8Array>({
    start: (controller) => tap.start(controller),
    pull: () => tap.pull(),
    cancel: (reason) => tap.cancel(reason),
  }, { highWaterMark: 0 });
}

/**
 * One tapped stream's state, driven by its `ReadableStream`'s start, pull and cancel. A class
 * rather than closures over locals so that the per-chunk path (`pull`, `#forward`) allocates
 * nothing of its own: no closure per chunk or per timer.
 */
class Tap {
  readonly #reader: ChunkReader;
  readonly #hooks: TapHooks;
  readonly #onHookError: (error: unknown) => void;
  readonly #boundary = createBoundaryTracker();
  readonly #idleMs: number;
  readonly #keepAliveMs: number;
  readonly #keepAlive: Uint8Array;
  readonly #timed: boolean;
  readonly #cut: AbortSignal | undefined;
  readonly #redact: ChunkRedactor | undefined;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #finished = false;
  #unwatchCut = () => {};
  // Keep-alives and the idle deadline share one timer per stream, armed when a wait begins and
  // no timer is armed, re-armed only when it fires early. (A timer set and cleared on every read
  // was 2.6 µs of sluice's 6 µs of CPU per event, measured in-process; see docs/performance.md.) The
  // timer acts by itself (enqueues a keep-alive, or cancels the read and ends the stream) while
  // the pull awaits its read: racing every read against a timeout promise cost ~1 KB of garbage
  // per event (see docs/performance.md).
  #waiting = false;
  #waitStart = 0;
  #lastSent = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #onTimer = () => this.#fire();

  constructor(
    reader: ChunkReader,
    hooks: TapHooks,
    onHookError: (error: unknown) => void,
    options: TapOptions,
  ) {
    this.#reader = reader;
    this.#hooks = hooks;
    this.#onHookError = onHookError;
    this.#idleMs = options.idleTimeoutMs ?? 0;
    this.#keepAliveMs = options.keepAliveMs ?? 0;
    this.#keepAlive = options.keepAlive ?? KEEP_ALIVE_COMMENT;
    this.#timed = this.#idleMs > 0 || this.#keepAliveMs > 0;
    this.#cut = options.cut;
    this.#redact = options.redact;
  }

  /** Keeps the controller and watches the cut. */
  start(controller: ReadableStreamDefaultController<Uint8Array>): void {
    this.#controller = controller;
    const cut = this.#cut;
    if (!cut) return;
    if (cut.aborted) {
      queueMicrotask(() => this.#abandon(cut.reason));
      return;
    }
    const listener = () => this.#abandon(cut.reason);
    cut.addEventListener("abort", listener, { once: true });
    this.#unwatchCut = () => cut.removeEventListener("abort", listener);
  }

  /**
   * Reads a chunk from the upstream and forwards it, or ends the stream. A chunk the redactor
   * holds whole is followed by another read: a pull that enqueues nothing is not called again.
   */
  async pull(): Promise<void> {
    for (;;) {
      if (this.#finished) return;
      if (this.#timed) {
        this.#waiting = true;
        this.#waitStart = this.#lastSent = performance.now();
        // A timer left from an earlier wait fires before this wait's deadlines and re-arms itself.
        if (this.#timer === undefined) this.#arm();
      }
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await this.#reader.read();
      } catch (error) {
        this.#waiting = false;
        if (!this.#finished) this.#fail(error);
        return;
      }
      this.#waiting = false;
      // The timer or the cut may have ended the stream (and cancelled this read) meanwhile.
      if (this.#finished) return;
      if (result.done) return this.#close();
      if (this.#forward(result.value)) return;
    }
  }

  /** The client went away. */
  cancel(reason: unknown): Promise<void> | undefined {
    if (this.#finished) return;
    this.#finish();
    try {
      this.#hooks.onCancel(reason);
    } catch (error) {
      this.#onHookError(error);
    }
    return this.#reader.cancel(reason).catch(() => {});
  }

  /**
   * Hands `chunk` (its secrets removed; a tail that may start one waits for the next chunk) to
   * the client first, then to the hooks: the per-chunk path. Whether anything was enqueued.
   */
  #forward(chunk: Uint8Array): boolean {
    const redact = this.#redact;
    if (redact) {
      chunk = redact.push(chunk);
      if (chunk.length === 0) return false;
    }
    this.#send(chunk);
    return true;
  }

  /** What the redactor still holds, sent before the stream's last words. */
  #flushHeld(): void {
    const rest = this.#redact?.end();
    if (rest && rest.length > 0) this.#send(rest);
  }

  #send(chunk: Uint8Array): void {
    this.#controller.enqueue(chunk);
    this.#boundary.see(chunk);
    try {
      this.#hooks.onChunk(chunk);
    } catch (error) {
      this.#onHookError(error);
    }
  }

  /** The upstream ended cleanly: `onClose`'s last bytes, if any, then the end. */
  #close(): void {
    this.#flushHeld();
    this.#finish();
    let last: Uint8Array | undefined | void;
    try {
      last = this.#hooks.onClose({ atEventBoundary: this.#boundary.atBoundary() });
    } catch (error) {
      this.#onHookError(error);
    }
    if (last) this.#controller.enqueue(last);
    this.#controller.close();
  }

  /** Reading failed: `onError`'s last words, if any, then the end. */
  #fail(error: unknown): void {
    this.#flushHeld();
    this.#finish();
    let last: Uint8Array | undefined;
    try {
      last = this.#hooks.onError(error, { atEventBoundary: this.#boundary.atBoundary() });
    } catch (hookError) {
      this.#onHookError(hookError);
    }
    if (last) this.#controller.enqueue(last);
    this.#controller.close();
  }

  /** Gives up on the upstream: its read is cancelled and the stream ends with `onError`'s words. */
  #abandon(error: unknown): void {
    if (this.#finished) return;
    this.#reader.cancel(error).catch(() => {});
    this.#fail(error);
  }

  /** Marks the stream ended: no more timer, no more cut. */
  #finish(): void {
    this.#finished = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#unwatchCut();
  }

  #arm(): void {
    let due = Infinity;
    if (this.#idleMs > 0) due = this.#waitStart + this.#idleMs;
    if (this.#keepAliveMs > 0) due = Math.min(due, this.#lastSent + this.#keepAliveMs);
    this.#timer = setTimeout(this.#onTimer, Math.max(0, due - performance.now()));
  }

  #fire(): void {
    this.#timer = undefined;
    if (this.#finished || !this.#waiting) return; // between reads: the next wait arms it again
    const now = performance.now();
    if (this.#idleMs > 0 && now - this.#waitStart >= this.#idleMs) {
      this.#abandon(new UpstreamIdleError(this.#idleMs));
      return;
    }
    if (this.#keepAliveMs > 0 && now - this.#lastSent >= this.#keepAliveMs) {
      // Inside an event a comment would corrupt it; wait for the event to end instead.
      if (this.#boundary.atBoundary()) this.#controller.enqueue(this.#keepAlive);
      this.#lastSent = now;
    }
    this.#arm();
  }
}

/**
 * Reads a whole body, giving up after `idleTimeoutMs` of silence (0: never) or when `signal`
 * aborts (its reason is thrown): the upstream's JSON answers and error bodies, which must not
 * hang a request for ever either, nor a shutting-down process.
 */
export async function readBody(
  body: ReadableStream<Uint8Array> | null,
  idleTimeoutMs = 0,
  signal?: AbortSignal,
): Promise<Uint8Array<ArrayBuffer>> {
  if (!body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let failure: unknown;
  // The tap brings the idle timeout; its onError only notes the failure (nothing is sent).
  const tapped = tapStream(
    body,
    {
      onChunk: () => {},
      onClose: () => {},
      onCancel: () => {},
      onError: (error) => {
        failure = error;
        return undefined;
      },
    },
    undefined,
    { idleTimeoutMs, cut: signal },
  );
  for await (const chunk of tapped) chunks.push(chunk);
  if (failure !== undefined) throw failure;
  return concatBytes(chunks);
}

/**
 * Reads `response`'s whole body with `arrayBuffer()`, giving up when it is not whole within
 * `withinMs` (0: never; `cancel` is then called to stop the read) or when `signal` aborts (its
 * reason is thrown). For bodies that come at once after their headers, such as a non-streamed
 * message: the limit is on the whole body, not on a silence. `readBody`'s tap was ~50 µs more
 * per request for such a body on loopback; `arrayBuffer()` on an untouched fetch body never
 * builds a JavaScript stream.
 */
export async function readBodyWithin(
  response: Response,
  withinMs: number,
  signal?: AbortSignal,
  cancel?: () => void,
): Promise<Uint8Array<ArrayBuffer>> {
  if (signal?.aborted) throw signal.reason;
  if (!response.body) return new Uint8Array(0);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  const read = response.arrayBuffer();
  read.catch(() => {}); // once given up on, its failure reaches nobody
  const stops: Promise<never>[] = [];
  if (withinMs > 0) {
    stops.push(
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          reject(new UpstreamIdleError(withinMs, true)); // first: the race ends with this
          cancel?.();
        }, withinMs);
      }),
    );
  }
  if (signal) {
    stops.push(
      new Promise<never>((_, reject) => {
        onAbort = () => reject(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
      }),
    );
  }
  try {
    return new Uint8Array(await Promise.race([read, ...stops]));
  } finally {
    clearTimeout(timer);
    if (onAbort) signal!.removeEventListener("abort", onAbort);
  }
}
