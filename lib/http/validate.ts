/**
 * Request validation: zod schemas, with failures turned into Anthropic-shaped 400s that name
 * the field.
 */
import type { Context, MiddlewareHandler } from "hono";
import type { z } from "zod";
import { SluiceError } from "../errors.ts";
import { requestBytes } from "./request_body.ts";

/**
 * Formats zod issues as `field: problem; field: problem`; an issue of the whole value is named
 * `whole` (`body` by default; `query` for a query string).
 */
export function describeIssues(issues: readonly z.core.$ZodIssue[], whole = "body"): string {
  return issues
    .slice(0, 5)
    .map((issue) => `${issue.path.length ? issue.path.join(".") : whole}: ${issue.message}`)
    .join("; ");
}

/** Requires a JSON content type; SDKs and `curl -H 'content-type: application/json'` send it. */
export function requireJsonContentType(): MiddlewareHandler {
  return async (c, next) => {
    const type = c.req.header("content-type") ?? "";
    // One media type, JSON (`application/json` or `application/…+json`, parameters allowed);
    // a list such as `application/json, text/plain` is not a content type.
    if (!/^application\/([\w.-]+\+)?json\s*(;|$)/i.test(type)) {
      throw new SluiceError(
        400,
        "invalid_request_error",
        `content-type must be application/json (got ${JSON.stringify(type || "none")})`,
      );
    }
    await next();
  };
}

const decoder = new TextDecoder();

/**
 * The request body read once: its bytes (what goes upstream, byte for byte) and its JSON checked
 * against `schema`, failures as 400s naming the field. Not Hono's zod validator: it caches the body as text, and reading bytes after it re-encodes that text through
 * one more `Response`, so the body was read, decoded, parsed and re-encoded on every request.
 */
export async function readJsonBody<T extends z.ZodType>(
  c: Context,
  schema: T,
): Promise<{ raw: Uint8Array<ArrayBuffer>; body: z.infer<T> }> {
  const raw = await requestBytes(c);
  let json: unknown;
  try {
    json = JSON.parse(decoder.decode(raw));
  } catch {
    throw new SluiceError(400, "invalid_request_error", "Malformed JSON in request body");
  }
  const result = schema.safeParse(json);
  if (!result.success) {
    throw new SluiceError(400, "invalid_request_error", describeIssues(result.error.issues));
  }
  return { raw, body: result.data };
}
