/**
 * The answers sluice gives when the upstream's is a failure: its own for an upstream that gave
 * none (a timeout, a failed connection), and an upstream HTTP error passed on in Anthropic's error
 * shape (or raw, for endpoints whose clients parse another shape), the server's key redacted.
 */
import { errorBody, errorBodyResponse, errorResponse, errorTypeForStatus } from "../errors.ts";
import type { Redactor } from "../redact.ts";
import { readBody } from "../stream/tap.ts";
import { clientHeaders } from "./pass_headers.ts";

/** Why an attempt got no answer at all. */
export type NoAnswer = "timeout" | "connection";

/**
 * sluice's own answer when the upstream gave none: `504 timeout_error` when no headers came in
 * time, `502 api_error` when no connection could be made (or what came was not HTTP).
 */
export function noAnswerResponse(why: NoAnswer, requestId?: string): Response {
  return why === "timeout"
    ? errorResponse(504, "timeout_error", "the upstream API did not answer in time", { requestId })
    : errorResponse(502, "api_error", "could not connect to the upstream API", { requestId });
}

/** Options for {@link errorAnswer}. */
export interface ErrorAnswerOptions {
  redact: Redactor;
  /** Longest silence (ms) while the error body is read; the SDK reads it with no limit at all. */
  bodyLimitMs: number;
  /** Pass the body's own bytes and content type instead of Anthropic's error shape. */
  raw?: boolean;
  /** sluice's id of the request, for a body that comes with no id of its own. */
  requestId?: string;
}

/**
 * The client's answer for an upstream HTTP error `response` (headers already redacted): its
 * status and the headers a client acts on (`request-id`, `retry-after`, rate limits), and a body
 * in Anthropic's error shape: the upstream's own when it has that shape, else one that quotes it
 * (an HTML page or a proxy's JSON), so clients can rely on the shape. With `raw`, the body's bytes.
 */
export async function errorAnswer(
  response: Response,
  options: ErrorAnswerOptions,
): Promise<Response> {
  const bytes = await readBody(response.body, options.bodyLimitMs).catch(() => null);
  const headers = clientHeaders(response.headers);
  if (options.raw && bytes) {
    return new Response(options.redact.bytes(bytes), { status: response.status, headers });
  }
  const parsed = bytes ? parseJson(bytes) : undefined;
  const status = response.status;
  // A body sluice writes names its request, as the API's own do: the upstream's id (its
  // `request-id` header) when it gave one, else sluice's. A body in the API's shape is the
  // upstream's, passed on as it came.
  const id = headers.get("request-id") ?? options.requestId;
  // Redacted before it is shortened: a key across the cut would survive in part otherwise.
  const body = isErrorShape(parsed) ? options.redact.value(parsed) : errorBody(
    errorTypeForStatus(status),
    parsed && typeof parsed === "object"
      ? `upstream answered ${status}: ${options.redact.text(JSON.stringify(parsed)).slice(0, 300)}`
      : `upstream answered ${status} without a JSON error body`,
    id,
  );
  return errorBodyResponse(status, body, { headers });
}

function parseJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
}

/** Whether `body` has Anthropic's error shape: `{type: "error", error: {type, message}}`. */
function isErrorShape(body: unknown): boolean {
  const b = body as { type?: unknown; error?: { type?: unknown; message?: unknown } } | null;
  return !!b && typeof b === "object" && b.type === "error" && typeof b.error === "object" &&
    b.error !== null && typeof b.error.type === "string" && typeof b.error.message === "string";
}
