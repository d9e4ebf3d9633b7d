/** Requests sluice refused itself (bad input, limits), as summaries for the stats. */
import type { RequestSummary } from "./request_summary.ts";

/** The endpoints whose requests are recorded (POST only). */
export const RECORDED_ENDPOINTS = ["/v1/messages", "/v1/chat/completions", "/chat"];

/** What {@link refusalSummary} needs to know about a request sluice answered with an error. */
export interface RefusalInfo {
  method: string;
  path: string;
  status: number;
  /** The error type the client got. */
  errorType: string;
  requestId: string;
  startedAt: number;
  endedAt: number;
  /** The request body, if it was already parsed (never read here). */
  body?: unknown;
}

/**
 * The summary of a request sluice answered itself with an error (bad input, a limit, a failure
 * before any upstream answer), or null when it is not recorded: other paths, and 401/403, so a
 * caller without a valid key cannot write to the stats. Outcome: `invalid_request` for 4xx,
 * `rate_limit_error` for 429, the error type for 5xx.
 */
export function refusalSummary(info: RefusalInfo): RequestSummary | null {
  if (info.method !== "POST" || !RECORDED_ENDPOINTS.includes(info.path)) return null;
  if (info.status < 400 || info.status === 401 || info.status === 403) return null;
  const body = (info.body && typeof info.body === "object" ? info.body : {}) as Record<
    string,
    unknown
  >;
  const outcome = info.status === 429
    ? "rate_limit_error"
    : info.status < 500
    ? "invalid_request"
    : info.errorType;
  return {
    id: info.requestId,
    endpoint: info.path,
    // `/chat` streams unless told not to; `/v1/messages` only when asked to.
    streaming: info.path === "/chat" ? body.stream !== false : body.stream === true,
    // Never the caller's model: a request sluice refused names whatever it likes (that is often
    // why it was refused), and it reached no model.
    model: null,
    outcome,
    status: info.status,
    retries: 0,
    startedAt: info.startedAt,
    ttftMs: null,
    totalMs: Math.max(0, info.endedAt - info.startedAt),
    upstreamTtftMs: null,
    usage: {
      input_tokens: 0,
      output_tokens: 0,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
    },
    stopReason: null,
    events: {},
  };
}
