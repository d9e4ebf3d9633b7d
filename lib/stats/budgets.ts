/**
 * Spend per gateway key, and the daily and monthly USD caps of `SLUICE_KEY_BUDGETS`.
 *
 * Spend is counted in Deno KV with atomic `sum`s, in whole pico-dollars, so every isolate that
 * shares the KV adds into the same counters and reads the same totals:
 * `["sluice","spend", keyId, "day", "YYYY-MM-DD"]` and `["sluice","spend", keyId, "month",
 * "YYYY-MM"]` (UTC). KV's `sum` cannot expire, so old periods stay: one small entry per key and
 * day. A cap is checked before a request goes upstream; the spend of a request is added when it
 * is over, so a stream running when its key crosses a cap is finished (and counted), and the
 * key's next request is refused.
 */
import { z } from "zod";
import { PICO_PER_USD } from "./cost.ts";
import { readJsonSetting } from "../json_setting.ts";

/** The caps of one key, in USD (either may be absent). */
export interface Budget {
  daily_usd?: number;
  monthly_usd?: number;
}

/** Caps by key id; `*` applies to every key without its own entry. */
export type KeyBudgets = Readonly<Record<string, Budget>>;

/** Raised for a `SLUICE_KEY_BUDGETS` that does not parse; the message says where. */
export class BudgetConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BudgetConfigError";
  }
}

const cap = z.number().finite().positive();
const budgetsSchema = z.record(
  z.string().regex(/^(\*|[0-9a-f]{16}|anonymous)$/, "a key id (16 hex digits), * or anonymous"),
  z.strictObject({ daily_usd: cap.optional(), monthly_usd: cap.optional() }).refine(
    (b) => b.daily_usd !== undefined || b.monthly_usd !== undefined,
    "needs daily_usd or monthly_usd",
  ),
);

/**
 * Parses `SLUICE_KEY_BUDGETS`: inline JSON when it starts with `{`, otherwise a path to a JSON
 * file, shaped `{"KEY_ID": {"daily_usd": 5, "monthly_usd": 100}, "*": {...}}`. Unset: no caps.
 */
export function parseKeyBudgets(
  value: string | undefined,
  readTextFile: (path: string) => string = Deno.readTextFileSync,
): KeyBudgets {
  if (value === undefined || value.trim() === "") return {};
  const json = readJsonSetting(value, {
    readTextFile,
    error: (message) => new BudgetConfigError(message),
  });
  const parsed = budgetsSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue.path.length ? issue.path.join(".") : "the value";
    throw new BudgetConfigError(`${where}: ${issue.message}`);
  }
  return parsed.data;
}

/** The caps that apply to `keyId`, if any. */
export function budgetOf(budgets: KeyBudgets, keyId: string): Budget | undefined {
  return budgets[keyId] ?? budgets["*"];
}

/** One period's figures for a key. */
export interface PeriodSpend {
  /** `YYYY-MM-DD` or `YYYY-MM`, UTC. */
  period: string;
  spent_usd: number;
  cap_usd: number | null;
  remaining_usd: number | null;
  /** When the period ends and its spend starts again from 0 (ISO time, UTC). */
  resets_at: string;
}

/** A key's spend against its caps (`GET /stats/keys/{id}`). */
export interface KeySpend {
  key_id: string;
  daily: PeriodSpend;
  monthly: PeriodSpend;
}

/** A cap a key has reached. */
export interface CapReached {
  cap: "daily" | "monthly";
  capUsd: number;
  spentUsd: number;
  resetsAt: number;
}

/** Where spend is counted. */
export interface SpendStore {
  /** Adds a request's cost to its key's current day and month (at `at`, epoch ms). */
  add(keyId: string, picoUsd: number, at: number): Promise<void>;
  /** The key's spend in the day and month of `at`, against `budget`. */
  spend(keyId: string, at: number, budget?: Budget): Promise<KeySpend>;
}

const PREFIX = ["sluice", "spend"] as const;

/** The UTC day and month of `at`, and when each ends. */
export function periodsOf(at: number): {
  day: string;
  month: string;
  dayEnds: number;
  monthEnds: number;
} {
  const d = new Date(at);
  const y = d.getUTCFullYear(), m = d.getUTCMonth(), day = d.getUTCDate();
  return {
    day: d.toISOString().slice(0, 10),
    month: d.toISOString().slice(0, 7),
    dayEnds: Date.UTC(y, m, day + 1),
    monthEnds: Date.UTC(y, m + 1, 1),
  };
}

/** Options for {@link kvSpendStore}. */
export interface KvSpendOptions {
  /**
   * Gather the sums of this long (ms) and write them in one atomic commit; 0 (the default)
   * writes each request's at once. `main.ts` passes `SLUICE_STATS_WRITE_MS`: a KV write per
   * request was the largest single item of a request's CPU after the stream itself.
   */
  flushMs?: number;
  /** Told of a failed batched write (its sums are kept for the next one). */
  onError?: (error: unknown) => void;
}

/** A {@link SpendStore} over Deno KV, whose batched sums `flush` writes (shutdown calls it). */
export interface KvSpendStore extends SpendStore {
  flush(): Promise<void>;
}

/** Most sums in one atomic commit (KV allows 1,000 mutations). */
const MAX_SUMS_PER_COMMIT = 500;

/**
 * A {@link SpendStore} over Deno KV. With `flushMs`, an isolate's own spend not yet written is
 * added to what it reads, so its own caps are exact; another isolate sees it up to `flushMs` later.
 */
export function kvSpendStore(kv: Deno.Kv, options: KvSpendOptions = {}): KvSpendStore {
  const flushMs = options.flushMs ?? 0;
  // Sums to write next, and every sum not yet in KV (those plus the ones being written), by key.
  const pending = new Map<string, Sum>();
  const unwritten = new Map<string, bigint>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const keep = ({ id, key, pico }: Sum) => {
    const entry = pending.get(id);
    if (entry) entry.pico += pico;
    else pending.set(id, { id, key, pico });
  };
  const written = ({ id, pico }: Sum) => {
    const left = (unwritten.get(id) ?? 0n) - pico;
    if (left === 0n) unwritten.delete(id);
    else unwritten.set(id, left);
  };
  async function flush() {
    clearTimeout(timer);
    timer = undefined;
    const batch = [...pending.values()];
    pending.clear();
    for (let i = 0; i < batch.length; i += MAX_SUMS_PER_COMMIT) {
      const part = batch.slice(i, i + MAX_SUMS_PER_COMMIT);
      try {
        await commitSums(kv, part);
      } catch (error) {
        batch.slice(i).forEach(keep); // for the next flush
        throw error;
      }
      part.forEach(written);
    }
  }
  return {
    flush,
    add(keyId, picoUsd, at) {
      const value = BigInt(Math.max(0, Math.round(picoUsd)));
      if (value === 0n) return Promise.resolve();
      const { day, month } = periodsOf(at);
      const sums = [
        sum([...PREFIX, keyId, "day", day], value),
        sum([...PREFIX, keyId, "month", month], value),
      ];
      if (flushMs <= 0) return commitSums(kv, sums);
      for (const one of sums) {
        keep({ ...one });
        unwritten.set(one.id, (unwritten.get(one.id) ?? 0n) + one.pico);
      }
      timer ??= setTimeout(() => flush().catch((error) => options.onError?.(error)), flushMs);
      return Promise.resolve();
    },
    async spend(keyId, at, budget) {
      const p = periodsOf(at);
      const keys = [[...PREFIX, keyId, "day", p.day], [...PREFIX, keyId, "month", p.month]];
      const [dayEntry, monthEntry] = await kv.getMany<Deno.KvU64[]>(keys);
      const usd = (entry: Deno.KvEntryMaybe<Deno.KvU64>, key: Deno.KvKey) =>
        Number((entry.value?.value ?? 0n) + (unwritten.get(JSON.stringify(key)) ?? 0n)) /
        PICO_PER_USD;
      return {
        key_id: keyId,
        daily: periodSpend(p.day, usd(dayEntry, keys[0]), budget?.daily_usd, p.dayEnds),
        monthly: periodSpend(p.month, usd(monthEntry, keys[1]), budget?.monthly_usd, p.monthEnds),
      };
    },
  };
}

/** One counter's addition; `id` names the key in maps. */
interface Sum {
  id: string;
  key: Deno.KvKey;
  pico: bigint;
}

function sum(key: Deno.KvKey, pico: bigint): Sum {
  return { id: JSON.stringify(key), key, pico };
}

/** Adds each sum to its KV counter, all or none. */
async function commitSums(kv: Deno.Kv, sums: Sum[]) {
  const atomic = kv.atomic();
  for (const { key, pico } of sums) atomic.sum(key, pico);
  const result = await atomic.commit();
  if (!result.ok) throw new Error("KV atomic commit was not applied");
}

function periodSpend(
  period: string,
  spent: number,
  capUsd: number | undefined,
  endsAt: number,
): PeriodSpend {
  const round = (n: number) => Math.round(n * 1e6) / 1e6;
  return {
    period,
    spent_usd: round(spent),
    cap_usd: capUsd ?? null,
    remaining_usd: capUsd === undefined ? null : round(Math.max(0, capUsd - spent)),
    resets_at: new Date(endsAt).toISOString(),
  };
}

/** The first cap (daily before monthly) that `spend` has reached, if any. */
export function capReached(spend: KeySpend): CapReached | undefined {
  for (const cap of ["daily", "monthly"] as const) {
    const period = spend[cap];
    if (period.cap_usd !== null && period.spent_usd >= period.cap_usd) {
      return {
        cap,
        capUsd: period.cap_usd,
        spentUsd: period.spent_usd,
        resetsAt: Date.parse(period.resets_at),
      };
    }
  }
  return undefined;
}

/**
 * A {@link SpendStore} in this isolate's memory, for an app built without KV (tests,
 * embedding): budgets then hold per isolate only.
 */
export function memorySpendStore(): SpendStore {
  const sums = new Map<string, number>();
  const get = (key: string) => sums.get(key) ?? 0;
  return {
    add(keyId, picoUsd, at) {
      const { day, month } = periodsOf(at);
      const pico = Math.max(0, Math.round(picoUsd));
      sums.set(`${keyId}/d/${day}`, get(`${keyId}/d/${day}`) + pico);
      sums.set(`${keyId}/m/${month}`, get(`${keyId}/m/${month}`) + pico);
      return Promise.resolve();
    },
    spend(keyId, at, budget) {
      const p = periodsOf(at);
      return Promise.resolve({
        key_id: keyId,
        daily: periodSpend(
          p.day,
          get(`${keyId}/d/${p.day}`) / PICO_PER_USD,
          budget?.daily_usd,
          p.dayEnds,
        ),
        monthly: periodSpend(
          p.month,
          get(`${keyId}/m/${p.month}`) / PICO_PER_USD,
          budget?.monthly_usd,
          p.monthEnds,
        ),
      });
    },
  };
}
