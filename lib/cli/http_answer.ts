/**
 * How `deno task replay` shows an HTTP error fixture (`NAME.http.json`, a recorded non-200
 * answer). There is no stream in it, so no text, time to first token, tokens or cost: only the
 * status and what the API said in its body and headers.
 */
import type { Fixture } from "../replay/fixtures.ts";

/** A fixture's recorded HTTP answer, `{"status","headers","body"}`. */
export type HttpAnswer = NonNullable<Fixture["http"]>;

/** What an HTTP error answer says; also the object `--json` prints for one. */
export interface HttpErrorSummary {
  kind: "http";
  status: number;
  /** The body's `error`, or null when the body is not the API's error shape. */
  error: { type: string; message: string } | null;
  /** The `retry-after` header as recorded (seconds, or an HTTP date), or null. */
  retry_after: string | null;
  request_id: string | null;
  body: unknown;
}

/** Reads the status, the error and the headers a caller acts on from a recorded answer. */
export function httpErrorSummary(http: HttpAnswer): HttpErrorSummary {
  const body = http.body as { error?: { type?: unknown; message?: unknown } } | null;
  const error = body?.error;
  return {
    kind: "http",
    status: http.status,
    error: typeof error?.type === "string"
      ? { type: error.type, message: typeof error.message === "string" ? error.message : "" }
      : null,
    retry_after: header(http.headers, "retry-after"),
    request_id: header(http.headers, "request-id"),
    body: http.body,
  };
}

/** The lines printed for an HTTP error answer, instead of the text and the stream's summary. */
export function httpErrorLines(summary: HttpErrorSummary): string[] {
  const lines = [`This fixture is an HTTP error answer, not a stream: status ${summary.status}`];
  if (summary.error) lines.push(`Error: ${summary.error.type}: ${summary.error.message}`);
  else lines.push(`Body (not an API error): ${JSON.stringify(summary.body) ?? "none"}`);
  if (summary.retry_after !== null) {
    const seconds = /^\d+$/.test(summary.retry_after);
    lines.push(`Retry after: ${summary.retry_after}${seconds ? " seconds" : ""}`);
  }
  if (summary.request_id !== null) lines.push(`Request id: ${summary.request_id}`);
  return lines;
}

/** Checks a parsed `NAME.http.json`; throws a message naming what is wrong. */
export function parseHttpAnswer(json: unknown): HttpAnswer {
  const value = json as Partial<HttpAnswer> | null;
  if (!value || typeof value !== "object" || !Number.isInteger(value.status)) {
    throw new Error('an HTTP fixture is {"status","headers","body"}, with a whole-number status');
  }
  const headers = value.headers && typeof value.headers === "object" ? value.headers : {};
  return { status: value.status as number, headers, body: value.body ?? null };
}

/** A header of a recording, by name in any case (a fixture written by hand may capitalise). */
function header(headers: Record<string, string> | undefined, name: string): string | null {
  // A fixture folder's files are not checked when loaded: a hand-written one may have none.
  for (const [key, value] of Object.entries(headers ?? {})) {
    if (key.toLowerCase() === name) return String(value);
  }
  return null;
}
