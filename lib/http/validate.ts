/**
 * Request validation: zod schemas through Hono's validator, with failures turned into
 * Anthropic-shaped 400s that name the field.
 */
import { zValidator } from "@hono/zod-validator";
import type { MiddlewareHandler } from "hono";
import type { z } from "zod";
import { SluiceError } from "../errors.ts";

/** Formats zod issues as `field: problem; field: problem`. */
export function describeIssues(issues: readonly z.core.$ZodIssue[]): string {
  return issues
    .slice(0, 5)
    .map((issue) => `${issue.path.length ? issue.path.join(".") : "body"}: ${issue.message}`)
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

/** Validates the JSON body against `schema`; the parsed value is `c.req.valid("json")`. */
export function jsonBody<T extends z.ZodType>(schema: T) {
  return zValidator("json", schema, (result) => {
    if (!result.success) {
      throw new SluiceError(400, "invalid_request_error", describeIssues(result.error.issues));
    }
  });
}
