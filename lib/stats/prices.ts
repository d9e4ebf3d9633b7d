/**
 * The price table: USD per million tokens for each model, read from lib/stats/prices.json or
 * from `SLUICE_PRICES` (a path, or inline JSON of the same shape).
 *
 * A model id matches a table entry when it is the entry itself or the entry followed by a dated
 * snapshot suffix (`claude-haiku-4-5-20251001`, `claude-opus-4-1@20250805`): the entry is the
 * alias, the dated id one of its snapshots. Nothing else matches, so `claude-sonnet-5-6` never
 * borrows `claude-sonnet-5`'s price: an unknown model is unpriced, never guessed.
 *
 * The shipped prices are the published list prices (platform.claude.com, models overview and
 * pricing pages, read 2026-12-03); docs/stats.md lists them with their caveats.
 */
import { z } from "zod";
import shipped from "./prices.json" with { type: "json" };
import { readJsonSetting } from "../json_setting.ts";

const usdPerMtok = z.number().finite().min(0);

/** Token prices of one band, USD per million tokens. */
const rates = {
  input: usdPerMtok,
  output: usdPerMtok,
  /** Default: 1.25 × input (the 5-minute cache write's published multiplier). */
  cache_write_5m: usdPerMtok.optional(),
  /** Default: 2 × input. */
  cache_write_1h: usdPerMtok.optional(),
  /** Default: 0.1 × input. */
  cache_read: usdPerMtok.optional(),
};

const modelPriceSchema = z.strictObject({
  ...rates,
  /** Higher prices for a whole request whose prompt (input + cache) is over the threshold. */
  long_context: z.strictObject({
    above_prompt_tokens: z.number().int().min(0),
    ...rates,
  }).optional(),
  /** Multipliers on token prices by `usage.service_tier` (default: batch 0.5, others 1). */
  service_tiers: z.record(z.string(), z.number().finite().min(0)).optional(),
  /** Multipliers on token prices by `usage.inference_geo` (default: us 1.1, others 1). */
  inference_geo: z.record(z.string(), z.number().finite().min(0)).optional(),
  /** USD per call, by `usage.server_tool_use` counter (default: web search $0.01, fetch $0). */
  server_tools: z.record(z.string(), z.number().finite().min(0)).optional(),
});

const tableSchema = z.record(
  z.string().regex(/^[\w.:@/-]{1,100}$/, "a model id"),
  modelPriceSchema,
);

/** Token prices of one band, every field filled in (USD per million tokens). */
export interface Rates {
  input: number;
  output: number;
  cache_write_5m: number;
  cache_write_1h: number;
  cache_read: number;
}

/** One model's prices, defaults applied. */
export interface ModelPrice extends Rates {
  long_context?: Rates & { above_prompt_tokens: number };
  service_tiers: Record<string, number>;
  inference_geo: Record<string, number>;
  server_tools: Record<string, number>;
}

/** A parsed price table. */
export interface PriceTable {
  /** The entry a model id matches (see the module comment), or undefined: unpriced. */
  lookup(model: string | null | undefined): { id: string; price: ModelPrice } | undefined;
  /** The table's model ids. */
  readonly models: readonly string[];
}

/** Published multipliers and per-call prices that apply unless a model's entry says otherwise. */
export const DEFAULT_SERVICE_TIERS: Readonly<Record<string, number>> = { batch: 0.5 };
/** `inference_geo: "us"` (US-only inference) costs 1.1 × on every token category. */
export const DEFAULT_INFERENCE_GEO: Readonly<Record<string, number>> = { us: 1.1 };
/** Web search is $10 per 1,000 searches; web fetch has no charge beyond its tokens. */
export const DEFAULT_SERVER_TOOLS: Readonly<Record<string, number>> = {
  web_search_requests: 0.01,
  web_fetch_requests: 0,
};

/** Raised for a table that does not have the expected shape; the message says where. */
export class PriceTableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PriceTableError";
  }
}

/** A dated snapshot of an alias: `-YYYYMMDD` or `@YYYYMMDD`, optionally with a version tail. */
const SNAPSHOT_SUFFIX = /^[-@]\d{8}(?:[-:][\w.:-]*)?$/;

/** Builds a table from parsed JSON; throws {@link PriceTableError} naming the bad field. */
export function priceTable(json: unknown): PriceTable {
  const parsed = tableSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue.path.length ? issue.path.join(".") : "the table";
    throw new PriceTableError(`${where}: ${issue.message}`);
  }
  const entries = new Map<string, ModelPrice>();
  for (const [id, raw] of Object.entries(parsed.data)) {
    entries.set(id, {
      ...filled(raw),
      long_context: raw.long_context
        ? { ...filled(raw.long_context), above_prompt_tokens: raw.long_context.above_prompt_tokens }
        : undefined,
      service_tiers: { ...DEFAULT_SERVICE_TIERS, ...raw.service_tiers },
      inference_geo: { ...DEFAULT_INFERENCE_GEO, ...raw.inference_geo },
      server_tools: { ...DEFAULT_SERVER_TOOLS, ...raw.server_tools },
    });
  }
  // Longest first: `claude-opus-4-5` is tried before `claude-opus-4` would be.
  const ids = [...entries.keys()].sort((a, b) => b.length - a.length);
  return {
    models: [...entries.keys()],
    lookup(model) {
      if (!model) return undefined;
      const exact = entries.get(model);
      if (exact) return { id: model, price: exact };
      for (const id of ids) {
        if (model.startsWith(id) && SNAPSHOT_SUFFIX.test(model.slice(id.length))) {
          return { id, price: entries.get(id)! };
        }
      }
      return undefined;
    },
  };
}

function filled(raw: { input: number; output: number } & Partial<Rates>): Rates {
  return {
    input: raw.input,
    output: raw.output,
    cache_write_5m: raw.cache_write_5m ?? raw.input * 1.25,
    cache_write_1h: raw.cache_write_1h ?? raw.input * 2,
    cache_read: raw.cache_read ?? raw.input * 0.1,
  };
}

/** The table shipped in lib/stats/prices.json. */
export function shippedPrices(): PriceTable {
  return priceTable(shipped);
}

/**
 * The table with `SLUICE_PRICES` applied: inline JSON when it starts with `{`, otherwise a path
 * to a JSON file. Its entries replace the shipped entries of the same model id (a negotiated
 * price for one model keeps the others' list prices); unset: the shipped table. Throws
 * {@link PriceTableError} with the reason.
 */
export function loadPrices(
  value: string | undefined,
  readTextFile: (path: string) => string = Deno.readTextFileSync,
): PriceTable {
  if (value === undefined || value.trim() === "") return shippedPrices();
  const json = readJsonSetting(value, {
    readTextFile,
    error: (message) => new PriceTableError(message),
  });
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    throw new PriceTableError("the table: expected an object of model ids");
  }
  return priceTable({ ...shipped, ...json });
}
