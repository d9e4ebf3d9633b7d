/**
 * Per-key limits: requests per minute and requests in flight, held in Deno KV so that every
 * isolate sharing the KV counts against the same budget.
 *
 * Written by hand rather than with `hono-rate-limiter`: that library counts requests in a
 * fixed window but has no cap on requests in flight and no Deno KV store, and both limits here
 * need the same small compare-and-set loop over KV's versionstamps.
 *
 * - Requests per minute: a fixed window per key and minute (`["sluice","limits","rpm",key,n]`),
 *   a counter raised with a versionstamp check, expiring on its own.
 * - In flight: one entry per key (`["sluice","limits","streams",key]`) holding a lease per
 *   running request with its expiry. A lease is released when the response body ends or is
 *   cancelled; while held, the isolate renews it every `leaseTtlMs / 3`, so the leases of a
 *   crashed isolate lapse within `leaseTtlMs` instead of blocking the key for ever.
 */
import type { MiddlewareHandler } from "hono";
import type { AuthVariables } from "./auth.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { SluiceError } from "../errors.ts";
import type { Logger } from "../log.ts";

/** A versioned key-value store: what the limits need from Deno KV. */
export interface LimitStore {
  get<T>(key: Deno.KvKey): Promise<{ value: T | null; version: string | null }>;
  /** Writes `value` if the entry is still at `version` (null: still absent); false otherwise. */
  set(
    key: Deno.KvKey,
    value: unknown,
    version: string | null,
    expireInMs: number,
  ): Promise<boolean>;
}

/** A {@link LimitStore} over Deno KV (atomic check of the versionstamp, then set). */
export function kvLimitStore(kv: Deno.Kv): LimitStore {
  return {
    async get<T>(key: Deno.KvKey) {
      const entry = await kv.get<T>(key);
      return { value: entry.value, version: entry.versionstamp };
    },
    async set(key, value, version, expireInMs) {
      const result = await kv.atomic()
        .check({ key, versionstamp: version })
        .set(key, value, { expireIn: expireInMs })
        .commit();
      return result.ok;
    },
  };
}

/**
 * A {@link LimitStore} in this isolate's memory, for an app built without KV (tests, embedding).
 * Limits then hold per isolate only.
 */
export function memoryLimitStore(clock: Clock = systemClock): LimitStore {
  const entries = new Map<string, { value: unknown; version: number; expiresAt: number }>();
  let version = 0;
  const live = (key: Deno.KvKey) => {
    const id = JSON.stringify(key);
    const entry = entries.get(id);
    if (entry && entry.expiresAt <= clock.now()) entries.delete(id);
    return entries.get(id);
  };
  return {
    get<T>(key: Deno.KvKey) {
      const entry = live(key);
      return Promise.resolve({
        value: (entry?.value ?? null) as T | null,
        version: entry ? String(entry.version) : null,
      });
    },
    set(key, value, expected, expireInMs) {
      const entry = live(key);
      if ((entry ? String(entry.version) : null) !== expected) return Promise.resolve(false);
      entries.set(JSON.stringify(key), {
        value,
        version: ++version,
        expiresAt: clock.now() + expireInMs,
      });
      return Promise.resolve(true);
    },
  };
}

/** Options for {@link createLimiter}. */
export interface LimiterOptions {
  store: LimitStore;
  /** Requests per minute per key; 0: no limit. */
  rpm: number;
  /** Requests in flight per key; 0: no limit. */
  maxConcurrent: number;
  /** Wall-clock time (shared across isolates). */
  clock?: Clock;
  /** How long a lease lives without renewal. Default 60 s. */
  leaseTtlMs?: number;
  /** Compare-and-set attempts before a request is refused as busy. Default 50. */
  maxAttempts?: number;
}

/** A held slot of a key's in-flight budget. */
export interface Lease {
  keyId: string;
  id: string;
}

/** The answer of a limit check. */
export type LimitDecision<T = undefined> =
  | { ok: true; value: T }
  | { ok: false; retryAfterMs: number; reason: string };

/** Counts requests per key against the configured limits. */
export interface Limiter {
  /** Counts one request against the key's per-minute budget. */
  take(keyId: string): Promise<LimitDecision>;
  /** Takes a slot of the key's in-flight budget; release it with {@link Limiter.release}. */
  acquire(keyId: string): Promise<LimitDecision<Lease | null>>;
  /** Gives a slot back (idempotent). */
  release(lease: Lease | null): Promise<void>;
  /** Leases this isolate holds now (for tests and shutdown). */
  held(): number;
}

const WINDOW_MS = 60_000;
const RPM_PREFIX = ["sluice", "limits", "rpm"] as const;
const STREAMS_PREFIX = ["sluice", "limits", "streams"] as const;

type Leases = Record<string, number>;

/**
 * Creates a limiter over `store` (Deno KV in production, so every isolate counts together).
 *
 * @example Two requests a minute, the third refused
 * ```ts
 * import assert from "node:assert/strict";
 * import { createLimiter, memoryLimitStore } from "./limits.ts";
 *
 * const limiter = createLimiter({ store: memoryLimitStore(), rpm: 2, maxConcurrent: 0 });
 * assert.equal((await limiter.take("key-a")).ok, true);
 * assert.equal((await limiter.take("key-a")).ok, true);
 * const third = await limiter.take("key-a");
 * assert.equal(third.ok, false);
 * assert.equal((await limiter.take("key-b")).ok, true); // keys are counted apart
 * ```
 */
export function createLimiter(options: LimiterOptions): Limiter {
  const clock = options.clock ?? systemClock;
  const ttl = options.leaseTtlMs ?? 60_000;
  const maxAttempts = options.maxAttempts ?? 50;
  const store = options.store;
  // Leases held by this isolate, by key, so one timer can renew them all.
  const mine = new Map<string, Set<string>>();
  let renewTimer: ReturnType<typeof setInterval> | undefined;

  /** Runs `step` until its write wins the compare-and-set, or gives up. */
  async function update<T, R = unknown>(
    key: Deno.KvKey,
    step: (value: T | null, now: number) => { write?: unknown; expireInMs: number; result: R },
  ): Promise<R | undefined> {
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      const { value, version } = await store.get<T>(key);
      const { write, expireInMs, result } = step(value, clock.now());
      if (write === undefined) return result;
      if (await store.set(key, write, version, expireInMs)) return result;
      // Lost a race with another request: back off a little, with jitter, and try again.
      if (attempt > 2) await new Promise((r) => setTimeout(r, Math.random() * attempt));
    }
    return undefined;
  }

  const busy = { ok: false as const, retryAfterMs: 1000, reason: "the limit store is busy" };

  function startRenewing() {
    if (renewTimer !== undefined) return;
    renewTimer = setInterval(() => {
      for (const [keyId, ids] of mine) {
        update<Leases>([...STREAMS_PREFIX, keyId], (leases, now) => {
          const next: Leases = { ...prune(leases, now) };
          for (const id of ids) next[id] = now + ttl;
          return { write: next, expireInMs: ttl * 2, result: true };
        }).catch(() => {});
      }
    }, Math.max(10, Math.floor(ttl / 3)));
  }

  function stopRenewingIfIdle() {
    if (mine.size === 0 && renewTimer !== undefined) {
      clearInterval(renewTimer);
      renewTimer = undefined;
    }
  }

  return {
    async take(keyId) {
      if (options.rpm <= 0) return { ok: true, value: undefined };
      const window = Math.floor(clock.now() / WINDOW_MS);
      const decision = await update<number, LimitDecision>(
        [...RPM_PREFIX, keyId, window],
        (count, now) => {
          const used = count ?? 0;
          if (used >= options.rpm) {
            return {
              expireInMs: WINDOW_MS * 2,
              result: {
                ok: false,
                retryAfterMs: Math.max(1, (window + 1) * WINDOW_MS - now),
                reason: `rate limit of ${options.rpm} requests per minute reached for this key`,
              },
            };
          }
          return {
            write: used + 1,
            expireInMs: WINDOW_MS * 2,
            result: { ok: true, value: undefined },
          };
        },
      );
      return decision ?? busy;
    },

    async acquire(keyId) {
      if (options.maxConcurrent <= 0) return { ok: true, value: null };
      const id = crypto.randomUUID();
      const decision = await update<Leases, LimitDecision<Lease | null>>(
        [...STREAMS_PREFIX, keyId],
        (leases, now) => {
          const live = prune(leases, now);
          if (Object.keys(live).length >= options.maxConcurrent) {
            return {
              expireInMs: ttl * 2,
              result: {
                ok: false,
                retryAfterMs: 1000,
                reason: `${options.maxConcurrent} requests are already in flight for this key; ` +
                  "retry when one ends",
              },
            };
          }
          return {
            write: { ...live, [id]: now + ttl },
            expireInMs: ttl * 2,
            result: { ok: true, value: { keyId, id } },
          };
        },
      );
      if (decision?.ok && decision.value) {
        const ids = mine.get(keyId) ?? new Set();
        ids.add(id);
        mine.set(keyId, ids);
        startRenewing();
      }
      return decision ?? busy;
    },

    async release(lease) {
      if (!lease) return;
      const ids = mine.get(lease.keyId);
      if (!ids?.delete(lease.id)) return;
      if (ids.size === 0) mine.delete(lease.keyId);
      stopRenewingIfIdle();
      await update<Leases>([...STREAMS_PREFIX, lease.keyId], (leases, now) => {
        const live = prune(leases, now);
        if (!(lease.id in live)) return { expireInMs: ttl * 2, result: true };
        delete live[lease.id];
        return { write: live, expireInMs: ttl * 2, result: true };
      });
    },

    held() {
      let n = 0;
      for (const ids of mine.values()) n += ids.size;
      return n;
    },
  };
}

/** The leases that have not expired. */
function prune(leases: Leases | null, now: number): Leases {
  const live: Leases = {};
  for (const [id, expiresAt] of Object.entries(leases ?? {})) {
    if (expiresAt > now) live[id] = expiresAt;
  }
  return live;
}

/** Options for {@link limitMiddleware}. */
export interface LimitMiddlewareOptions {
  limiter: Limiter;
  logger?: Logger;
}

/**
 * Applies the limits to a request (after authentication, which sets `keyId`): 429
 * `rate_limit_error` with `retry-after` (seconds) and `retry-after-ms` over either limit. The
 * in-flight slot is held until the response body has been sent, or cancelled by the client.
 */
export function limitMiddleware(
  options: LimitMiddlewareOptions,
): MiddlewareHandler<{ Variables: AuthVariables }> {
  const { limiter } = options;
  const refuse = (decision: { retryAfterMs: number; reason: string }) => {
    throw new SluiceError(429, "rate_limit_error", decision.reason, {
      "retry-after": String(Math.max(1, Math.ceil(decision.retryAfterMs / 1000))),
      "retry-after-ms": String(Math.ceil(decision.retryAfterMs)),
    });
  };
  return async (c, next) => {
    const keyId = c.get("keyId") ?? "anonymous";
    const rate = await limiter.take(keyId);
    if (!rate.ok) refuse(rate);
    const slot = await limiter.acquire(keyId);
    if (!slot.ok) refuse(slot);
    const lease = slot.ok ? slot.value : null;
    if (!lease) return await next();
    let handedOver = false;
    try {
      await next();
      const body = c.res.body;
      if (body) {
        c.res = new Response(releasing(body, () => release()), c.res);
        handedOver = true;
      }
    } finally {
      if (!handedOver) await release();
    }
    function release() {
      return limiter.release(lease).catch((error) =>
        options.logger?.warn("limit release failed", { error: String(error) })
      );
    }
  };
}

/** `body`, calling `done` once when it ends, fails or is cancelled. */
function releasing(body: ReadableStream<Uint8Array>, done: () => void): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let called = false;
  const once = () => {
    if (!called) {
      called = true;
      done();
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done: ended, value } = await reader.read();
        if (ended) {
          controller.close();
          once();
        } else controller.enqueue(value);
      } catch (error) {
        once();
        controller.error(error);
      }
    },
    cancel(reason) {
      once();
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}
