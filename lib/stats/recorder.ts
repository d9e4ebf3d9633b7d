/**
 * What happens to a request once it is over: it is priced (lib/stats/cost.ts), its cost is added
 * to its key's spend (lib/stats/budgets.ts), one line about it is logged, and its summary goes to
 * the stats sink. All of it off the response path: a slow or failing store never delays or fails
 * a client, and nothing here throws.
 */
import type { Logger } from "../log.ts";
import type { SpendStore } from "./budgets.ts";
import { withCost } from "./cost.ts";
import type { PriceTable } from "./prices.ts";
import type { RequestSummary, StatsSink } from "./request_summary.ts";

/** Options for {@link createRecorder}. */
export interface RecorderOptions {
  prices: PriceTable;
  logger: Logger;
  stats?: StatsSink;
  /** Where spend per key is counted (with KV); without it budgets are not counted. */
  spend?: SpendStore;
  /** Writes the one line per request (lib/stats/request_log.ts); none when absent. */
  requestLog?: (summary: RequestSummary) => void;
  /** Cleans a summary before anything keeps it (the app redacts the server's key). */
  scrub?: (summary: RequestSummary) => RequestSummary;
}

/** Builds the function that takes a request's summary once it is over. */
export function createRecorder(
  options: RecorderOptions,
): (summary: Promise<RequestSummary>) => Promise<void> {
  const { prices, logger, stats, spend, requestLog } = options;
  const scrub = options.scrub ?? ((summary: RequestSummary) => summary);
  // All of it after the response's last bytes when the sink can defer (the KV sink can).
  const defer = stats?.defer?.bind(stats) ?? ((work: () => Promise<void>) => work());
  return (pending) =>
    pending.then((raw) => defer(() => recordNow(raw))).catch((error) =>
      logger.warn("stats record failed", { error: String(error) })
    );

  async function recordNow(raw: RequestSummary) {
    const summary = withCost(scrub(raw), prices);
    try {
      requestLog?.(summary);
    } catch (error) {
      logger.warn("request log failed", { error: String(error) });
    }
    const spent = summary.costUsd && summary.keyId && spend
      ? spend.add(summary.keyId, Math.round(summary.costUsd * 1e12), summary.startedAt)
        .catch((error) => logger.warn("spend record failed", { error: String(error) }))
      : undefined;
    await Promise.all([stats?.record(summary), spent]);
  }
}
