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
import type { MiddlewareHandler } from "hono";
import { errorResponse, SluiceError } from "../errors.ts";

/** Options for {@link bodyReadDeadline}. */
export interface BodyReadDeadlineOptions {
  /** Longest silence while sluice waits for the next bytes of a body (ms). */
  idleMs: number;
  /** The setting that changes it, named in the error. */
  variable?: string;
}

/** Middleware: bodies read through it fail with a 408 after `idleMs` of silence. */
export function bodyReadDeadline(options: BodyReadDeadlineOptions): MiddlewareHandler {
  const variable = options.variable ?? "SLUICE_BODY_TIMEOUT_MS";
  const timeout = () =>
    new SluiceError(
      408,
      "timeout_error",
      `the request body stopped arriving: nothing for ${options.idleMs} ms (${variable})`,
      // The rest of the body may never come: the connection cannot be used again.
      { connection: "close" },
    );
  return async (c, next) => {
    const raw = c.req.raw;
    if (!raw.body || options.idleMs <= 0) return await next();
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
    if (timedOut) {
      // Whatever the route made of the failed read (a JSON parser's 400, an upstream failure),
      // the client is told what happened.
      const error = timeout();
      const answer = errorResponse(error.status, error.type, error.message, {
        requestId: c.get("requestId"),
        headers: error.headers,
      });
      c.res = new Response(thenDrop(await answer.bytes()), answer);
      // A body of a declared length would be whole, and the connection kept (Hono's setter
      // copies the earlier answer's headers, so this goes after it).
      c.res.headers.delete("content-length");
    }
  };
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
