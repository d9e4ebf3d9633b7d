/**
 * What sluice records about one request once it is over: the unit of stats.
 */

/** Token counts, with the API's cumulative-usage rule already applied. */
export interface TokenUsage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
}

/**
 * How a request ended: `ok`; an upstream error type such as `overloaded_error` or
 * `rate_limit_error`; `client_aborted`; `incomplete` (the stream ended without `message_stop`);
 * or `invalid_request` (sluice refused it before calling upstream).
 */
export type Outcome = string;

/** One finished request. Holds no prompt, no answer and no key. */
export interface RequestSummary {
  /** The upstream `request-id` when there is one, else sluice's own request id. */
  id: string;
  endpoint: string;
  streaming: boolean;
  model: string | null;
  outcome: Outcome;
  status: number;
  retries: number;
  /** Request arrival, epoch ms. */
  startedAt: number;
  /** Arrival to the first content delta sent to the client; non-streaming: to the whole body. */
  ttftMs: number | null;
  totalMs: number;
  /** From the upstream call to the first content delta received from it. */
  upstreamTtftMs: number | null;
  usage: TokenUsage;
  stopReason: string | null;
  /** Events seen, by SSE event name (pings included). */
  events: Record<string, number>;
  /** A short hash of the gateway key (never the key), for per-key views. */
  keyId?: string;
  /** The answer's message id (`msg_…`), when one arrived. */
  messageId?: string;
  /** The usage fields that change the price but not the token counts (see lib/stats/cost.ts). */
  usageDetail?: UsageDetail;
  /**
   * What the request cost in USD, from the usage it reached (a stream cut short or left by its
   * client included); null when its model has no price. Set by the app before recording.
   */
  costUsd?: number | null;
}

/** Usage fields the price depends on besides the four token counts. */
export interface UsageDetail {
  /** Cache writes by lifetime; without it every write counts as the 5-minute kind. */
  cache_creation?: { ephemeral_5m_input_tokens: number; ephemeral_1h_input_tokens: number };
  /** Server tool calls by counter name (`web_search_requests`, `web_fetch_requests`). */
  server_tool_use?: Record<string, number>;
  /** `standard`, `priority` or `batch`. */
  service_tier?: string;
  /** Where inference ran (`us`, `global`, `not_available`). */
  inference_geo?: string;
}

/** Reads {@link UsageDetail} from a Message's `usage`; absent or malformed parts are left out. */
export function usageDetail(usage: unknown): UsageDetail {
  const u = (usage && typeof usage === "object" ? usage : {}) as Record<string, unknown>;
  const count = (v: unknown) => (typeof v === "number" && Number.isFinite(v) && v > 0 ? v : 0);
  const detail: UsageDetail = {};
  const cache = u.cache_creation as Record<string, unknown> | null | undefined;
  if (cache && typeof cache === "object") {
    detail.cache_creation = {
      ephemeral_5m_input_tokens: count(cache.ephemeral_5m_input_tokens),
      ephemeral_1h_input_tokens: count(cache.ephemeral_1h_input_tokens),
    };
  }
  const tools = u.server_tool_use as Record<string, unknown> | null | undefined;
  if (tools && typeof tools === "object") {
    detail.server_tool_use = Object.fromEntries(
      Object.entries(tools).filter(([, v]) => count(v) > 0).map(([k, v]) => [k, count(v)]),
    );
  }
  if (typeof u.service_tier === "string") detail.service_tier = u.service_tier;
  if (typeof u.inference_geo === "string") detail.inference_geo = u.inference_geo;
  return detail;
}

/** Reads usage counters from a Message's `usage`, treating missing values as 0. */
export function tokenUsage(usage: unknown): TokenUsage {
  const u = (usage && typeof usage === "object" ? usage : {}) as Record<string, unknown>;
  const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
  return {
    input_tokens: n(u.input_tokens),
    output_tokens: n(u.output_tokens),
    cache_creation_input_tokens: n(u.cache_creation_input_tokens),
    cache_read_input_tokens: n(u.cache_read_input_tokens),
  };
}

/** Where finished requests go. `record` must not throw into the response path; see kv_stats.ts. */
export interface StatsSink {
  record(summary: RequestSummary): void | Promise<void>;
  /**
   * Runs `work` (a finished request's recording: pricing, spend, the log line, `record`) off the
   * response path, after the response's last bytes reach the socket. A sink without it has the
   * recording run at once (in-memory sinks, tests); the KV sink waits one macrotask.
   */
  defer?(work: () => Promise<void>): Promise<void>;
}

/** A sink that keeps summaries in memory (tests, and the default when no KV is given). */
export function memorySink(): StatsSink & { records: RequestSummary[] } {
  const records: RequestSummary[] = [];
  return { records, record: (summary) => void records.push(summary) };
}
