/** The recent-requests log's entries (`GET /stats/recent`). */
import { cleanLabel } from "./kv_layout.ts";
import type { TokenFigures } from "./report.ts";
import { round } from "./report.ts";
import type { RequestSummary } from "./request_summary.ts";

/** One entry of `GET /stats/recent`: figures only, never a prompt, an answer or a key. */
export interface RecentEntry {
  id: string;
  time: string;
  endpoint: string;
  model: string | null;
  streaming: boolean;
  outcome: string;
  status: number;
  retries: number;
  ttft_ms: number | null;
  total_ms: number;
  upstream_ttft_ms: number | null;
  tokens: TokenFigures;
  stop_reason: string | null;
  events: Record<string, number>;
}

/** A recent-log entry for a summary. */
export function recentEntry(summary: RequestSummary): RecentEntry {
  const u = summary.usage;
  return {
    id: summary.id,
    time: new Date(summary.startedAt).toISOString(),
    endpoint: cleanLabel(summary.endpoint, "unknown"),
    model: summary.model === null ? null : cleanLabel(summary.model, "unknown"),
    streaming: summary.streaming,
    outcome: cleanLabel(summary.outcome, "unknown"),
    status: summary.status,
    retries: summary.retries,
    ttft_ms: summary.ttftMs === null ? null : round(summary.ttftMs, 3),
    total_ms: round(summary.totalMs, 3),
    upstream_ttft_ms: summary.upstreamTtftMs === null ? null : round(summary.upstreamTtftMs, 3),
    tokens: {
      input: u.input_tokens,
      output: u.output_tokens,
      cache_creation_input: u.cache_creation_input_tokens,
      cache_read_input: u.cache_read_input_tokens,
    },
    stop_reason: summary.stopReason,
    events: { ...summary.events },
  };
}
