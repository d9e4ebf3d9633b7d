/**
 * What one request cost, in USD, from its usage and the price table (lib/stats/prices.ts).
 *
 * - `input_tokens` at the input price, `output_tokens` at the output price.
 * - `cache_creation_input_tokens` split by `usage.cache_creation`: the 1-hour part at the 1-hour
 *   write price, the rest at the 5-minute price (the API's default lifetime, and what it means
 *   when the split is absent).
 * - `cache_read_input_tokens` at the cache-read price: never as ordinary input.
 * - A prompt (input + cache writes + cache reads) over a model's `long_context` threshold prices
 *   all of the request's tokens at that band's prices.
 * - Token prices times the `service_tier` multiplier (batch: 0.5) and the `inference_geo` one.
 * - Plus each `server_tool_use` counter times its price per call (web search: $0.01).
 *
 * Sums are kept in whole pico-dollars (1e-12 USD): every published price per million tokens has
 * at most six decimals, so each token product is an exact integer and totals never drift.
 */
import type { PriceTable, Rates } from "./prices.ts";
import type { RequestSummary, TokenUsage, UsageDetail } from "./request_summary.ts";
import { tokenUsage, usageDetail } from "./request_summary.ts";

/** Pico-dollars per USD. */
export const PICO_PER_USD = 1e12;

/** A priced request: the total and its parts, in USD. */
export interface PricedCost {
  priced: true;
  /** The table entry the model matched. */
  priceId: string;
  usd: number;
  /** The same total in whole pico-dollars (what the stats add up). */
  picoUsd: number;
  parts: {
    input: number;
    output: number;
    cache_write_5m: number;
    cache_write_1h: number;
    cache_read: number;
    server_tools: number;
  };
}

/** A request whose model is not in the table: counted, never guessed. */
export interface UnpricedCost {
  priced: false;
}

/** The cost of one request. */
export type Cost = PricedCost | UnpricedCost;

/** Options for {@link costOf}. */
export interface CostInput {
  model: string | null | undefined;
  usage: TokenUsage;
  detail?: UsageDetail;
}

/** Prices one request's usage with `table`. */
export function costOf(table: PriceTable, input: CostInput): Cost {
  const entry = table.lookup(input.model);
  if (!entry) return { priced: false };
  const { price } = entry;
  const u = input.usage;
  const detail = input.detail ?? {};
  const n = (v: number | undefined) => (Number.isFinite(v) && v! > 0 ? Math.round(v!) : 0);
  const written = n(u.cache_creation_input_tokens);
  const oneHour = Math.min(written, n(detail.cache_creation?.ephemeral_1h_input_tokens));
  const prompt = n(u.input_tokens) + written + n(u.cache_read_input_tokens);
  const band: Rates = price.long_context && prompt > price.long_context.above_prompt_tokens
    ? price.long_context
    : price;
  const multiplier = (price.service_tiers[detail.service_tier ?? ""] ?? 1) *
    (price.inference_geo[detail.inference_geo ?? ""] ?? 1);
  // tokens × (USD per Mtok × 1e6) = pico-dollars; rounded once per part after the multiplier.
  const pico = (tokens: number, usdPerMtok: number) =>
    Math.round(tokens * Math.round(usdPerMtok * 1e6) * multiplier);
  const parts = {
    input: pico(n(u.input_tokens), band.input),
    output: pico(n(u.output_tokens), band.output),
    cache_write_5m: pico(written - oneHour, band.cache_write_5m),
    cache_write_1h: pico(oneHour, band.cache_write_1h),
    cache_read: pico(n(u.cache_read_input_tokens), band.cache_read),
    server_tools: 0,
  };
  for (const [counter, calls] of Object.entries(detail.server_tool_use ?? {})) {
    const perCall = price.server_tools[counter];
    if (perCall !== undefined) parts.server_tools += Math.round(n(calls) * perCall * PICO_PER_USD);
  }
  const picoUsd = Object.values(parts).reduce((sum, part) => sum + part, 0);
  return {
    priced: true,
    priceId: entry.id,
    usd: picoUsd / PICO_PER_USD,
    picoUsd,
    parts: Object.fromEntries(
      Object.entries(parts).map(([k, v]) => [k, v / PICO_PER_USD]),
    ) as PricedCost["parts"],
  };
}

/** Rounds USD for display and JSON: to the micro-dollar, enough to add up to the cent. */
export function roundUsd(usd: number): number {
  return Math.round(usd * 1e6) / 1e6;
}

/**
 * `summary` with its `costUsd`: priced from the usage it reached, 0 when it used nothing (a
 * refusal, a request its client left before any answer), null when its model has no price.
 */
export function withCost(summary: RequestSummary, table: PriceTable): RequestSummary {
  const u = summary.usage;
  const calls = Object.values(summary.usageDetail?.server_tool_use ?? {});
  const used = u.input_tokens + u.output_tokens + u.cache_creation_input_tokens +
          u.cache_read_input_tokens > 0 || calls.some((n) => n > 0);
  if (!used) return { ...summary, costUsd: 0 };
  const cost = costOf(table, { model: summary.model, usage: u, detail: summary.usageDetail });
  return { ...summary, costUsd: cost.priced ? cost.usd : null };
}

/** The cost of a Message (or an accumulated stream's message): its model and its `usage`. */
export function costOfMessage(
  table: PriceTable,
  message: { model?: unknown; usage?: unknown } | null | undefined,
): Cost {
  const model = typeof message?.model === "string" ? message.model : null;
  return costOf(table, {
    model,
    usage: tokenUsage(message?.usage),
    detail: usageDetail(message?.usage),
  });
}
