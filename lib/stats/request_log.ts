/**
 * The one log line per request: what happened to it in figures (ids, model, status, timing,
 * tokens, cost, outcome), never a key or any message content. The summary it is built from holds
 * neither (lib/stats/request_summary.ts), and the fields are picked one by one, so a field added
 * to the summary later does not reach the log by accident.
 */
import type { Logger } from "../log.ts";
import type { RequestSummary } from "./request_summary.ts";

/** The fields of a request's log line. */
export interface RequestLogFields {
  request_id: string;
  /** A short hash of the gateway key (`anonymous` without one), never the key. */
  key_id: string | null;
  endpoint: string;
  model: string | null;
  status: number;
  streamed: boolean;
  ttft_ms: number | null;
  duration_ms: number;
  tokens: { input: number; output: number; cache_write: number; cache_read: number };
  /** USD; null when the model has no price. */
  cost_usd: number | null;
  outcome: string;
}

/** The log fields of `summary`. */
export function requestLogFields(summary: RequestSummary): RequestLogFields {
  const ms = (n: number | null) => (n === null || !Number.isFinite(n) ? null : round(n, 1));
  const u = summary.usage;
  return {
    request_id: summary.id,
    key_id: summary.keyId ?? null,
    endpoint: summary.endpoint,
    model: summary.model,
    status: summary.status,
    streamed: summary.streaming,
    ttft_ms: ms(summary.ttftMs),
    duration_ms: ms(summary.totalMs) ?? 0,
    tokens: {
      input: u.input_tokens,
      output: u.output_tokens,
      cache_write: u.cache_creation_input_tokens,
      cache_read: u.cache_read_input_tokens,
    },
    cost_usd: summary.costUsd === undefined ? null : summary.costUsd,
    outcome: summary.outcome,
  };
}

/** Writes `summary`'s line at info level (`SLUICE_LOG_FORMAT=json`: one JSON object). */
export function logRequest(logger: Logger, summary: RequestSummary): void {
  logger.info("request", { ...requestLogFields(summary) });
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}
