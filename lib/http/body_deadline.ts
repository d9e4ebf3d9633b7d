/**
 * A read deadline for request bodies: a client that stops sending its body (one shorter than its
 * `content-length`, or a body dripped byte by byte with long pauses) is answered
 * `408 timeout_error` and its connection dropped, instead of holding a request open for ever.
 *
 * Hand-written: `Deno.serve` has no read timeouts of its own (nor header ones; see
 * docs/hardening.md), and Hono has no body-timeout middleware. The deadline is on silence, not on
 * the whole body: a large upload that keeps arriving is never cut, and time spent while sluice
 * itself does not read (the upstream reading an upload slowly) does not count.
 */
import type { Context, MiddlewareHandler } from "hono";
import { errorResponse, SluiceError } from "../errors.ts";

/** Options for {@link bodyReadDeadline}. */
export interface BodyReadDeadlineOptions {
  /** Longest silence while sluice waits for the next bytes of a body (ms). */
  idleMs: number;
  /** The setting that changes it, named in the error. */
  variable?: string;
  /**
   * The largest declared body read whole here ({@link EAGER_READ_MAX_BYTES} by default; no more
   * than the body limit behind, which refuses a larger one by its `content-length` unread).
   */
  eagerMaxBytes?: number;
}

/**
 * The largest declared body read whole by the middleware itself (bytes); a larger one, or one of
 * unknown length, is read through a watched stream as the route reads it.
 */
export const EAGER_READ_MAX_BYTES: number = 1024 * 1024;

/**
 * Middleware: bodies read through it fail with a 408 after `idleMs` of silence.
 *
 * A body that declares its length (every SDK's JSON body does) and is at most
 * {@link EAGER_READ_MAX_BYTES} is read here, whole, under one re-armed timer, and handed to the
 * routes through Hono's body cache (`c.req.arrayBuffer()`, `text()`, `json()`); `c.req.raw` keeps
 * the request's headers, its body consumed. Other bodies are wrapped in a stream that times each
 * read. (The wrapper, a new `Request` around it and a timer per chunk on every request were
 * 70-140 µs of CPU per request in `bench/request_cpu_bench.ts`, a quarter of sluice's.)
 */
export function bodyReadDeadline(options: BodyReadDeadlineOptions): MiddlewareHandler {
  const variable = options.variable ?? "SLUICE_BODY_TIMEOUT_MS";
  const eagerMax = options.eagerMaxBytes ?? EAGER_READ_MAX_BYTES;
  const timeout = () =>
    new SluiceError(
      408,
      "timeout_error",
      `the request body stopped arriving: nothing for ${options.idleMs} ms (${variable})`,
      // The rest of the body may never come: the connection cannot be used again.
      { connection: "close" },
    );
  /** The 408, written before the connection is dropped. */
  const dropAnswer = async (c: Context) => {
    const error = timeout();
    const answer = errorResponse(error.status, error.type, error.message, {
      requestId: c.get("requestId"),
      headers: error.headers,
    });
    const dropped = new Response(thenDrop(await answer.bytes()), answer);
    // A body of a declared length would be whole, and the connection kept.
    dropped.headers.delete("content-length");
    return dropped;
  };
  return async (c, next) => {
    const raw = c.req.raw;
    if (!raw.body || options.idleMs <= 0) return await next();
    const length = declaredLength(raw.headers);
    if (length !== undefined && length <= eagerMax) {
      const bytes = await readDeclared(raw.body, length, options.idleMs);
      if (bytes === "silent") return await dropAnswer(c);
      // What every body reader of HonoRequest looks up first. A promise, as Hono keeps it (its
      // readers call `.then` on a cached body), though its type says a plain ArrayBuffer.
      (c.req.bodyCache as Record<string, unknown>).arrayBuffer = Promise.resolve(bytes.buffer);
      return await next();
    }
    let timedOut = false;
    const reader = raw.body.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const silence = new Promise<"silent">((resolve) => {
          timer = setTimeout(() => resolve("silent"), options.idleMs);
        });
        try {
          const result = await Promise.race([reader.read(), silence]);
          if (result === "silent") {
            timedOut = true;
            // The read still pending is left alone: cancelling it made Deno 2.5 close the
            // connection before the 408 was written.
            controller.error(timeout());
          } else if (result.done) controller.close();
          else controller.enqueue(result.value);
        } catch (error) {
          controller.error(error);
        } finally {
          clearTimeout(timer);
        }
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
    c.req.raw = new Request(raw, { body, duplex: "half" } as RequestInit);
    await next();
    // Whatever the route made of the failed read (a JSON parser's 400, an upstream failure),
    // the client is told what happened (Hono's setter copies the earlier answer's headers).
    if (timedOut) c.res = await dropAnswer(c);
  };
}

/** The body's `content-length`, when it is a plain decimal number and the body not chunked. */
function declaredLength(headers: Headers): number | undefined {
  if (headers.has("transfer-encoding")) return undefined;
  const value = headers.get("content-length");
  return value !== null && /^\d{1,15}$/.test(value) ? Number(value) : undefined;
}

/**
 * Reads a body of `length` bytes whole, or `"silent"` once nothing came for `idleMs`. One timer
 * for the whole read: when it fires early (bytes came meanwhile) it is armed again for the rest.
 */
async function readDeclared(
  body: ReadableStream<Uint8Array>,
  length: number,
  idleMs: number,
): Promise<Uint8Array<ArrayBuffer> | "silent"> {
  const reader = body.getReader();
  const bytes = new Uint8Array(length);
  let filled = 0;
  let lastRead = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let silent!: (value: "silent") => void;
  const silence = new Promise<"silent">((resolve) => (silent = resolve));
  const check = () => {
    const quiet = performance.now() - lastRead;
    if (quiet >= idleMs) silent("silent");
    else timer = setTimeout(check, idleMs - quiet);
  };
  timer = setTimeout(check, idleMs);
  try {
    for (;;) {
      const result = await Promise.race([reader.read(), silence]).catch(() => {
        throw unreadable();
      });
      // The read still pending is left alone (see the stream path above).
      if (result === "silent") return "silent";
      if (result.done) break;
      if (filled + result.value.byteLength > length) throw unreadable();
      bytes.set(result.value, filled);
      filled += result.value.byteLength;
      lastRead = performance.now();
    }
  } finally {
    clearTimeout(timer);
  }
  if (filled !== length) throw unreadable();
  return bytes;
}

/** A body that failed as it was read, or did not match its `content-length`. */
function unreadable(): SluiceError {
  return new SluiceError(
    400,
    "invalid_request_error",
    "the request body could not be read whole (it did not match its content-length)",
  );
}

/** How long the 408's bytes get to reach the socket before its connection is dropped (ms). */
const DROP_DELAY_MS = 100;

/**
 * A body that sends `bytes`, then fails. The only way a `Deno.serve` handler can close its
 * connection: `connection: close` is not enough while the client still owes body bytes (the
 * HTTP layer waits for them, with no timer, before it closes). Deno prints the failure; its
 * one-line stack says what happened instead of a trace.
 */
function thenDrop(bytes: Uint8Array<ArrayBuffer>): ReadableStream<Uint8Array> {
  let sent = false;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (!sent) {
        sent = true;
        controller.enqueue(bytes);
        return;
      }
      const drop = new Error("dropped a connection whose request body stopped arriving");
      drop.stack = `sluice: ${drop.message} (408)`;
      // Not at once: a failure in the same turn as the last chunk made Deno 2.5 drop the
      // connection before writing that chunk.
      return new Promise<void>((resolve) =>
        setTimeout(() => {
          controller.error(drop);
          resolve();
        }, DROP_DELAY_MS)
      );
    },
  }, { highWaterMark: 0 });
}
