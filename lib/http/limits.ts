/**
 * Per-key limits: requests per minute and requests in flight, answered from this isolate's memory
 * and reconciled with Deno KV off the request's path, so that every isolate sharing the KV counts
 * against the same budget without a KV round trip before the upstream call.
 *
 * Written by hand rather than with `hono-rate-limiter`: that library counts requests in a
 * fixed window but has no cap on requests in flight and no Deno KV store.
 *
 * Each isolate publishes its own share of a key's use and reads the others' (one KV entry per
 * live isolate, each expiring on its own, so nothing here grows with history):
 * - requests per minute: `["sluice","limits","rpm",key,minute,instance]`, this isolate's count
 *   in that minute;
 * - in flight: `["sluice","limits","streams",key,instance]`, this isolate's running requests,
 *   with an expiry renewed every `leaseTtlMs / 3` while any runs, so a crashed isolate's share
 *   lapses within `leaseTtlMs` instead of blocking the key for ever.
 *
 * A decision is `mine + others' last known >= limit`, taken synchronously; the request then
 * starts a reconcile of its key (publish this isolate's counts, read the others'), which runs
 * alongside the upstream call. The accuracy this costs: one isolate is exact; with several, an
 * isolate knows the others' use as of its last reconcile of that key (its previous request on
 * the key, or the last renewal), so a key can exceed a limit by what other isolates admitted
 * since: at most one request per other isolate when requests are spaced wider than a KV round
 * trip, more in a burst that reaches several isolates at once.
 */
import type { MiddlewareHandler } from "hono";
import type { AuthVariables } from "./auth.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { SluiceError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { endOf, isBuffered } from "./response_end.ts";

/** One isolate's share of a key's use. */
export interface Share {
  count: number;
  /** Epoch ms after which readers ignore it (KV's `expireIn` deletes it later). */
  expiresAt: number;
}

/** What the limits need from Deno KV: one entry per isolate, and a list of a key's entries. */
export interface LimitStore {
  /** Writes (or with null, deletes) this isolate's entry. */
  put(key: Deno.KvKey, share: Share | null, expireInMs: number): Promise<void>;
  /** The entries under `prefix`, by their last key part (the isolate). */
  list(prefix: Deno.KvKey): Promise<Map<string, Share>>;
}

/** A {@link LimitStore} over Deno KV. */
export function kvLimitStore(kv: Deno.Kv): LimitStore {
  return {
    async put(key, share, expireInMs) {
      if (share) await kv.set(key, share, { expireIn: expireInMs });
      else await kv.delete(key);
    },
    async list(prefix) {
      const shares = new Map<string, Share>();
      for await (const entry of kv.list<Share>({ prefix })) {
        shares.set(String(entry.key[entry.key.length - 1]), entry.value);
      }
      return shares;
    },
  };
}

/**
 * A {@link LimitStore} in this isolate's memory, for an app built without KV (tests, embedding).
 * Limits then hold per isolate only.
 */
export function memoryLimitStore(clock: Clock = systemClock): LimitStore {
  const entries = new Map<string, { key: Deno.KvKey; share: Share; expiresAt: number }>();
  return {
    put(key, share, expireInMs) {
      const id = JSON.stringify(key);
      if (share) entries.set(id, { key, share, expiresAt: clock.now() + expireInMs });
      else entries.delete(id);
      return Promise.resolve();
    },
    list(prefix) {
      const shares = new Map<string, Share>();
      const now = clock.now();
      for (const [id, entry] of entries) {
        if (entry.expiresAt <= now) entries.delete(id);
        else if (prefix.every((part, i) => entry.key[i] === part)) {
          shares.set(String(entry.key[entry.key.length - 1]), entry.share);
        }
      }
      return Promise.resolve(shares);
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
  /** How long an isolate's in-flight share lives without renewal. Default 60 s. */
  leaseTtlMs?: number;
  /** Names this isolate's entries; random by default. */
  instanceId?: string;
  /** Where a failed reconcile is reported (it is retried with the key's next request). */
  logger?: Logger;
}

/** A held slot of a key's in-flight budget. */
export interface Lease {
  keyId: string;
  id: number;
}

/** The answer of a limit check. */
export type LimitDecision<T = undefined> =
  | { ok: true; value: T }
  | { ok: false; retryAfterMs: number; reason: string };

/** Counts requests per key against the configured limits. */
export interface Limiter {
  /** Counts one request against the key's per-minute budget (from memory, at once). */
  take(keyId: string): LimitDecision;
  /** Takes a slot of the key's in-flight budget; release it with {@link Limiter.release}. */
  acquire(keyId: string): LimitDecision<Lease | null>;
  /** Gives a slot back (idempotent). */
  release(lease: Lease | null): void;
  /** Leases this isolate holds now (for tests and shutdown). */
  held(): number;
  /**
   * Reconciles `keyIds` (by default every key this isolate knows) with the store: publishes its
   * counts, reads the others'. Resolves when done; for tests and for a shutdown.
   */
  sync(keyIds?: string[]): Promise<void>;
}

const WINDOW_MS = 60_000;
const RPM_PREFIX = ["sluice", "limits", "rpm"] as const;
const STREAMS_PREFIX = ["sluice", "limits", "streams"] as const;
/** Keys in memory before idle ones are let go. */
const MAX_KEYS = 10_000;

interface KeyState {
  window: number;
  /** This isolate's requests in `window`, and the other isolates' as last read. */
  mineInWindow: number;
  othersInWindow: number;
  inFlight: Set<number>;
  othersInFlight: number;
  /** The reconcile running now, and whether another must follow it. */
  syncing: Promise<void> | null;
  again: boolean;
}

/**
 * Creates a limiter over `store` (Deno KV in production, so every isolate counts together).
 *
 * @example Two requests a minute, the third refused
 * ```ts
 * import assert from "node:assert/strict";
 * import { createLimiter, memoryLimitStore } from "./limits.ts";
 *
 * const limiter = createLimiter({ store: memoryLimitStore(), rpm: 2, maxConcurrent: 0 });
 * assert.equal(limiter.take("key-a").ok, true); // decided from memory, at once
 * assert.equal(limiter.take("key-a").ok, true);
 * const third = limiter.take("key-a");
 * assert.equal(third.ok, false);
 * assert.equal(limiter.take("key-b").ok, true); // keys are counted apart
 * await limiter.sync(); // the counts reach the store (off the request's path in the app)
 * ```
 */
export function createLimiter(options: LimiterOptions): Limiter {
  const limiter: LimiterState = {
    options,
    clock: options.clock ?? systemClock,
    ttl: options.leaseTtlMs ?? 60_000,
    store: options.store,
    instance: options.instanceId ?? crypto.randomUUID(),
    keys: new Map(),
    nextLease: 0,
    renewTimer: undefined,
  };
  return {
    take(keyId) {
      return takeRequest(limiter, keyId);
    },
    acquire(keyId) {
      return acquireSlot(limiter, keyId);
    },
    release(lease) {
      releaseSlot(limiter, lease);
    },
    held() {
      return heldLeases(limiter);
    },
    async sync(keyIds = [...limiter.keys.keys()]) {
      await Promise.all(keyIds.map((keyId) => schedule(limiter, keyId, stateOf(limiter, keyId))));
    },
  };
}

/** What one limiter keeps: its settings and the keys this isolate knows. */
interface LimiterState {
  options: LimiterOptions;
  clock: Clock;
  ttl: number;
  store: LimitStore;
  instance: string;
  keys: Map<string, KeyState>;
  nextLease: number;
  renewTimer: ReturnType<typeof setInterval> | undefined;
}

/** {@link Limiter.take}. */
function takeRequest(limiter: LimiterState, keyId: string): LimitDecision {
  const { options, clock } = limiter;
  if (options.rpm <= 0) return { ok: true, value: undefined };
  const state = stateOf(limiter, keyId);
  if (state.mineInWindow + state.othersInWindow >= options.rpm) {
    schedule(limiter, keyId, state); // the others' counts may have gone stale
    return {
      ok: false,
      retryAfterMs: Math.max(1, (state.window + 1) * WINDOW_MS - clock.now()),
      reason: `rate limit of ${options.rpm} requests per minute reached for this key`,
    };
  }
  state.mineInWindow++;
  schedule(limiter, keyId, state);
  return { ok: true, value: undefined };
}

/** {@link Limiter.acquire}. */
function acquireSlot(limiter: LimiterState, keyId: string): LimitDecision<Lease | null> {
  const { options } = limiter;
  if (options.maxConcurrent <= 0) return { ok: true, value: null };
  const state = stateOf(limiter, keyId);
  if (state.inFlight.size + state.othersInFlight >= options.maxConcurrent) {
    schedule(limiter, keyId, state);
    return {
      ok: false,
      retryAfterMs: 1000,
      reason: `${options.maxConcurrent} requests are already in flight for this key; ` +
        "retry when one ends",
    };
  }
  const id = ++limiter.nextLease;
  state.inFlight.add(id);
  schedule(limiter, keyId, state);
  startRenewing(limiter);
  return { ok: true, value: { keyId, id } };
}

/** {@link Limiter.release}. */
function releaseSlot(limiter: LimiterState, lease: Lease | null): void {
  if (!lease) return;
  const state = limiter.keys.get(lease.keyId);
  if (!state?.inFlight.delete(lease.id)) return;
  stopRenewingIfIdle(limiter);
  schedule(limiter, lease.keyId, state);
}

/** {@link Limiter.held}. */
function heldLeases(limiter: LimiterState): number {
  let n = 0;
  for (const state of limiter.keys.values()) n += state.inFlight.size;
  return n;
}

function stateOf(limiter: LimiterState, keyId: string): KeyState {
  const { keys } = limiter;
  const window = Math.floor(limiter.clock.now() / WINDOW_MS);
  let state = keys.get(keyId);
  if (!state) {
    if (keys.size >= MAX_KEYS) forgetIdle(limiter);
    state = {
      window,
      mineInWindow: 0,
      othersInWindow: 0,
      inFlight: new Set(),
      othersInFlight: 0,
      syncing: null,
      again: false,
    };
    keys.set(keyId, state);
  } else if (state.window !== window) {
    state.window = window;
    state.mineInWindow = 0;
    state.othersInWindow = 0;
  }
  return state;
}

/** Others' live counts under `prefix`, this isolate's left out. */
async function others(limiter: LimiterState, prefix: Deno.KvKey, now: number): Promise<number> {
  let sum = 0;
  for (const [id, share] of await limiter.store.list(prefix)) {
    if (id !== limiter.instance && share.expiresAt > now) sum += share.count;
  }
  return sum;
}

async function reconcile(limiter: LimiterState, keyId: string, state: KeyState) {
  const { options, store, instance, ttl } = limiter;
  const now = limiter.clock.now();
  const window = state.window;
  const writes: Promise<void>[] = [];
  if (options.rpm > 0) {
    const expiresAt = (window + 2) * WINDOW_MS;
    writes.push(store.put(
      [...RPM_PREFIX, keyId, window, instance],
      { count: state.mineInWindow, expiresAt },
      Math.max(1000, expiresAt - now),
    ));
  }
  if (options.maxConcurrent > 0) {
    const count = state.inFlight.size;
    writes.push(store.put(
      [...STREAMS_PREFIX, keyId, instance],
      count > 0 ? { count, expiresAt: now + ttl } : null,
      ttl,
    ));
  }
  await Promise.all(writes);
  const [inWindow, inFlight] = await Promise.all([
    options.rpm > 0 ? others(limiter, [...RPM_PREFIX, keyId, window], now) : 0,
    options.maxConcurrent > 0 ? others(limiter, [...STREAMS_PREFIX, keyId], now) : 0,
  ]);
  if (state.window === window) state.othersInWindow = inWindow;
  state.othersInFlight = inFlight;
}

/** Starts a reconcile of `keyId` unless one runs; then another follows it. Never throws. */
function schedule(limiter: LimiterState, keyId: string, state: KeyState): Promise<void> {
  if (state.syncing) {
    state.again = true;
    return state.syncing;
  }
  state.syncing = (async () => {
    do {
      state.again = false;
      try {
        await reconcile(limiter, keyId, state);
      } catch (error) {
        limiter.options.logger?.warn("limit reconcile failed", { error: String(error) });
        return;
      }
    } while (state.again);
  })().finally(() => (state.syncing = null));
  return state.syncing;
}

function startRenewing(limiter: LimiterState) {
  if (limiter.renewTimer !== undefined) return;
  limiter.renewTimer = setInterval(() => {
    for (const [keyId, state] of limiter.keys) {
      if (state.inFlight.size > 0) schedule(limiter, keyId, state);
    }
  }, Math.max(10, Math.floor(limiter.ttl / 3)));
}

function stopRenewingIfIdle(limiter: LimiterState) {
  for (const state of limiter.keys.values()) if (state.inFlight.size > 0) return;
  clearInterval(limiter.renewTimer);
  limiter.renewTimer = undefined;
}

/** Lets go of keys with nothing in flight and no count in this minute (bounded memory). */
function forgetIdle(limiter: LimiterState) {
  const window = Math.floor(limiter.clock.now() / WINDOW_MS);
  for (const [keyId, state] of limiter.keys) {
    if (state.inFlight.size === 0 && state.window !== window && !state.syncing) {
      limiter.keys.delete(keyId);
    }
  }
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
    const rate = limiter.take(keyId);
    if (!rate.ok) refuse(rate);
    const slot = limiter.acquire(keyId);
    if (!slot.ok) refuse(slot);
    const lease = slot.ok ? slot.value : null;
    if (!lease) return await next();
    let handedOver = false;
    try {
      await next();
      if (isBuffered(c.res)) return; // nothing left upstream: the slot goes back at once
      const body = c.res.body;
      if (body) {
        // A tapped call says when it is over; any other body is watched by a wrapping stream.
        const ended = endOf(body);
        if (ended) ended.finally(() => limiter.release(lease));
        else c.res = new Response(releasing(body, () => limiter.release(lease)), c.res);
        handedOver = true;
      }
    } finally {
      if (!handedOver) limiter.release(lease);
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
