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
import { unreadable } from "./request_body.ts";

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
 * unknown length, is read through a watched stream as the route reads it. A body read whole must
 * arrive within one deadline (at the 30 s default, 256 KiB at 9 KB/s); a larger one may take as
 * long as it likes while it keeps arriving.
 */
export const EAGER_READ_MAX_BYTES: number = 256 * 1024;

/**
 * Middleware: bodies read through it fail with a 408 after `idleMs` of silence.
 *
 * A body that declares its length (every SDK's JSON body does) and is at most
 * {@link EAGER_READ_MAX_BYTES} is read here with `arrayBuffer()`, whole, against one timer, and
 * handed to the routes through Hono's body cache (`c.req.arrayBuffer()`, `text()`, `json()`; see
 * {@link readWhole}); `c.req.raw` keeps the request's headers, its body consumed. Its body stream
 * is never touched: on a request from the wire, `request.body` alone builds a JavaScript stream,
 * and reading through it cost ~35 µs more per request than `arrayBuffer()` in
 * `bench/request_stages_bench.ts`. Other bodies are wrapped in a stream that times each read.
 * (That wrapper, a new `Request` around it and a timer per chunk on every request were 70-140 µs
 * of CPU per request in `bench/request_cpu_bench.ts`, a quarter of sluice's.)
 */
export function bodyReadDeadline(options: BodyReadDeadlineOptions): MiddlewareHandler {
  const variable = options.variable ?? "SLUICE_BODY_TIMEOUT_MS";
  const eagerMax = options.eagerMaxBytes ?? EAGER_READ_MAX_BYTES;
  const timeout = (whole = false) =>
    new SluiceError(
      408,
      "timeout_error",
      whole
        ? `the request body did not arrive within ${options.idleMs} ms (${variable})`
        : `the request body stopped arriving: nothing for ${options.idleMs} ms (${variable})`,
      // The rest of the body may never come: the connection cannot be used again.
      { connection: "close" },
    );
  /** The 408, written before the connection is dropped. */
  const dropAnswer = async (c: Context, whole?: boolean) => {
    const error = timeout(whole);
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
    if (options.idleMs <= 0) return await next();
    const raw = c.req.raw;
    const length = declaredLength(raw.headers);
    if (length === 0) return await next();
    if (length !== undefined && length <= eagerMax) {
      const bytes = await readDeclared(raw, options.idleMs);
      if (bytes === "late") return await dropAnswer(c, true);
      // What every body reader of HonoRequest looks up first. A promise, as Hono keeps it (its
      // readers call `.then` on a cached body), though its type says a plain ArrayBuffer.
      (c.req.bodyCache as Record<string, unknown>).arrayBuffer = Promise.resolve(bytes);
      return await next();
    }
    if (!raw.body) return await next();
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
export function declaredLength(headers: Headers): number | undefined {
  if (headers.has("transfer-encoding")) return undefined;
  const value = headers.get("content-length");
  return value !== null && /^\d{1,15}$/.test(value) ? Number(value) : undefined;
}

/**
 * Reads `request`'s body whole, or `"late"` when it is not whole within `ms`. The read still
 * pending then is left alone (see the stream path above). `arrayBuffer()` fails when the body
 * ends before its `content-length` (a 400: the client is gone or lied).
 */
async function readDeclared(request: Request, ms: number): Promise<ArrayBuffer | "late"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), ms)));
  const read = request.arrayBuffer();
  read.catch(() => {}); // once late, its failure reaches nobody
  try {
    return await Promise.race([read, late]);
  } catch {
    throw unreadable();
  } finally {
    clearTimeout(timer);
  }
}

/** Whether {@link bodyReadDeadline} read this request's body whole (it is in Hono's body cache). */
export function readWhole(c: Context): boolean {
  return c.req.bodyCache.arrayBuffer !== undefined;
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
