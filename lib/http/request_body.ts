/**
 * A request's body read whole, with a failed read turned into the caller's 400: a client that
 * closes its side before its `content-length` is done, or whose connection drops meanwhile,
 * makes Deno's body read fail with an I/O error, which would otherwise reach the app's error
 * handler as sluice's own 500 (and be counted as one).
 */
import type { Context } from "hono";
import { SluiceError } from "../errors.ts";

/** A body that failed as it was read, or did not match its `content-length`. */
export function unreadable(): SluiceError {
  return new SluiceError(
    400,
    "invalid_request_error",
    "the request body could not be read whole (it did not match its content-length)",
  );
}

/**
 * The errors Deno's HTTP server gives a body read whose bytes stopped coming. Only these become
 * the 400: any other failure is somebody's verdict on the body (the body limit's, the read
 * deadline's) and goes on as it is.
 */
const READ_FAILURES = [
  Deno.errors.BadResource,
  Deno.errors.Http,
  Deno.errors.UnexpectedEof,
  Deno.errors.ConnectionReset,
  Deno.errors.ConnectionAborted,
  Deno.errors.BrokenPipe,
  Deno.errors.Interrupted,
];

/** `read`'s result, or {@link unreadable} when the body's bytes stopped coming. */
export async function readOrRefuse<T>(read: Promise<T>): Promise<T> {
  try {
    return await read;
  } catch (error) {
    if (READ_FAILURES.some((kind) => error instanceof kind)) throw unreadable();
    throw error;
  }
}

/** The body's bytes, as `c.req.arrayBuffer()` reads them (from Hono's cache when it holds them). */
export async function requestBytes(c: Context): Promise<Uint8Array<ArrayBuffer>> {
  return new Uint8Array(await readOrRefuse(c.req.arrayBuffer()));
}

/** The body as text, as `c.req.text()` reads it. */
export function requestText(c: Context): Promise<string> {
  return readOrRefuse(c.req.text());
}
