/**
 * A source of time, injected wherever sluice measures something so that tests can drive it.
 *
 * `now()` returns milliseconds since the Unix epoch with sub-millisecond precision. The system
 * clock is built from `performance.now()` so intervals never go backwards when the wall clock
 * is adjusted.
 */
export interface Clock {
  now(): number;
}

/** The real clock: `performance.timeOrigin + performance.now()`. */
export const systemClock: Clock = {
  now: () => performance.timeOrigin + performance.now(),
};

/** A clock that only moves when told to, for tests. */
export function manualClock(
  start = 0,
): Clock & { advance(ms: number): void; set(ms: number): void } {
  let t = start;
  return {
    now: () => t,
    advance(ms: number) {
      t += ms;
    },
    set(ms: number) {
      t = ms;
    },
  };
}
