/**
 * The size limit of uploads (`POST /v1/files`), enforced while the body streams through.
 *
 * Hand-written because Hono's `bodyLimit` reads a body that has no `content-length` into memory
 * to count it; an upload must reach the upstream as it arrives, so this one counts the bytes as
 * they pass and errors the stream past the limit (the upstream call then fails and the client
 * gets a 413). A declared `content-length` over the limit is refused before any upstream call.
 */
import type { MiddlewareHandler } from "hono";
import { errorResponse, SluiceError } from "../errors.ts";

/** Whether a request is an upload that takes the file limit instead of the JSON one. */
export function isUpload(method: string, path: string): boolean {
  return method === "POST" && /^\/v1\/files\/?$/.test(path);
}

/** Options for {@link streamingBodyLimit}. */
export interface StreamingBodyLimitOptions {
  maxBytes: number;
  /** The setting that raises the limit, named in the error. */
  variable: string;
}

/** Middleware: refuses or cuts a body larger than `maxBytes`, without buffering it. */
export function streamingBodyLimit(options: StreamingBodyLimitOptions): MiddlewareHandler {
  const tooLarge = () =>
    new SluiceError(
      413,
      "request_too_large",
      `request body is larger than ${options.maxBytes} bytes (${options.variable})`,
    );
  return async (c, next) => {
    const raw = c.req.raw;
    if (!raw.body) return await next();
    const declared = Number(raw.headers.get("content-length") ?? NaN);
    if (Number.isFinite(declared)) {
      // The HTTP layer holds the body to its declared length, so the header is the size.
      if (declared > options.maxBytes) throw tooLarge();
      return await next();
    }
    let seen = 0;
    let over = false;
    const counted = raw.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          seen += chunk.byteLength;
          if (seen > options.maxBytes) {
            over = true;
            controller.error(tooLarge());
            return;
          }
          controller.enqueue(chunk);
        },
      }),
    );
    c.req.raw = new Request(raw, { body: counted, duplex: "half" } as RequestInit);
    await next();
    if (over) {
      // The upstream call failed on the cut body; say why instead of passing on that failure.
      const error = tooLarge();
      c.res = errorResponse(error.status, error.type, error.message, {
        requestId: c.get("requestId"),
      });
    }
  };
}
