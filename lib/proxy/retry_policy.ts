/**
 * When an upstream attempt is retried and how long sluice waits first: the official SDK's policy
 * (`@anthropic-ai/sdk` 1.14.0, `shouldRetry` and `calculateDefaultRetryTimeoutMillis`), with one
 * difference a gateway needs: a requested wait is capped (`maxWaitMs`), because sluice holds its
 * caller's connection meanwhile.
 */

/**
 * Whether an answer that is not OK is worth another attempt: the upstream's `x-should-retry`
 * decides when it says `true` or `false`; else 408, 409, 429 and every 5xx are retried.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { shouldRetry } from "./retry_policy.ts";
 *
 * assert.equal(shouldRetry(new Response(null, { status: 529 })), true);
 * assert.equal(shouldRetry(new Response(null, { status: 400 })), false);
 * const told = new Response(null, { status: 500, headers: { "x-should-retry": "false" } });
 * assert.equal(shouldRetry(told), false);
 * ```
 */
export function shouldRetry(response: Response): boolean {
  const told = response.headers.get("x-should-retry");
  if (told === "true") return true;
  if (told === "false") return false;
  const status = response.status;
  return status === 408 || status === 409 || status === 429 || status >= 500;
}

/**
 * The wait an answer asks for, read as the SDK reads it: `retry-after-ms` (ms), else
 * `retry-after` (seconds or an HTTP date). Undefined when neither gives a positive number.
 */
export function requestedWaitMs(headers: Headers, now: number = Date.now()): number | undefined {
  const ms = parseFloat(headers.get("retry-after-ms") ?? "");
  if (Number.isFinite(ms) && ms > 0) return ms;
  const after = headers.get("retry-after");
  if (!after) return undefined;
  const seconds = parseFloat(after);
  const wait = Number.isNaN(seconds) ? Date.parse(after) - now : seconds * 1000;
  return Number.isFinite(wait) && wait > 0 ? wait : undefined;
}

/** Options for {@link retryWaitMs}. */
export interface RetryWaitOptions {
  /** The answer's headers, when the attempt got an answer (not for a timeout or a failed connection). */
  headers?: Headers;
  /** Retries made before this one: 0 before the first retry. */
  retriesSoFar: number;
  /** Longest wait a `retry-after` may ask for (ms). */
  maxWaitMs: number;
  /** A number in [0, 1) for the jitter; `Math.random` by default. */
  random?: () => number;
}

/**
 * How long to wait before the next attempt: what the answer asks for, at most `maxWaitMs`;
 * without a request, the SDK's backoff (0.5 s, 1 s, 2 s … at most 8 s, less up to 25% jitter).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { retryWaitMs } from "./retry_policy.ts";
 *
 * const asked = new Headers({ "retry-after": "3600" });
 * assert.equal(retryWaitMs({ headers: asked, retriesSoFar: 0, maxWaitMs: 10_000 }), 10_000);
 * assert.equal(retryWaitMs({ retriesSoFar: 1, maxWaitMs: 10_000, random: () => 0 }), 1000);
 * ```
 */
export function retryWaitMs(options: RetryWaitOptions): number {
  const asked = options.headers ? requestedWaitMs(options.headers) : undefined;
  if (asked !== undefined) return Math.min(asked, options.maxWaitMs);
  const seconds = Math.min(0.5 * 2 ** options.retriesSoFar, 8);
  const jitter = 1 - (options.random ?? Math.random)() * 0.25;
  return seconds * jitter * 1000;
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const abort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", abort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", abort, { once: true });
  });
}
