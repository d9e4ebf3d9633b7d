/**
 * Key budgets at the edge: a request from a key that has reached its daily or monthly USD cap
 * (`SLUICE_KEY_BUDGETS`) is refused with a 429 in Anthropic's shape before anything goes
 * upstream. The spend it is checked against is counted in lib/stats/budgets.ts when requests end,
 * so a stream running when its key crosses a cap is finished, not cut; the next request is not.
 */
import type { MiddlewareHandler } from "hono";
import type { AuthVariables } from "./auth.ts";
import type { Clock } from "../clock.ts";
import { SluiceError } from "../errors.ts";
import type { KeyBudgets, SpendStore } from "../stats/budgets.ts";
import { budgetOf, capReached } from "../stats/budgets.ts";

/** Options for {@link budgetGuard}. */
export interface BudgetGuardOptions {
  budgets: KeyBudgets;
  spend: SpendStore;
  clock: Clock;
}

/** Refuses a request whose key has reached a cap; lets every other request through. */
export function budgetGuard(
  options: BudgetGuardOptions,
): MiddlewareHandler<{ Variables: AuthVariables }> {
  return async (c, next) => {
    const keyId = c.get("keyId");
    const budget = budgetOf(options.budgets, keyId);
    if (!budget) return await next();
    const now = options.clock.now();
    const reached = capReached(await options.spend.spend(keyId, now, budget));
    if (!reached) return await next();
    const seconds = Math.max(1, Math.ceil((reached.resetsAt - now) / 1000));
    const period = reached.cap === "daily" ? "today" : "this month";
    throw new SluiceError(
      429,
      "rate_limit_error",
      `this key has reached its ${reached.cap} budget of $${reached.capUsd} ` +
        `($${reached.spentUsd} spent ${period}, UTC; SLUICE_KEY_BUDGETS); ` +
        `it resets at ${new Date(reached.resetsAt).toISOString()}`,
      { "retry-after": String(seconds) },
    );
  };
}
