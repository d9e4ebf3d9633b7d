/**
 * `GET /stats`, `GET /stats/recent`, `GET /stats/keys/{id}` (one key's spend against its caps)
 * and `GET /metrics`: what sluice has measured, from Deno KV.
 * They need the admin key once sluice has keys (see lib/admin_auth.ts), and show figures only:
 * never a prompt, an answer or a key.
 */
import { Hono } from "hono";
import { zValidator } from "@hono/zod-validator";
import { z } from "zod";
import { adminAuth } from "../lib/http/admin_auth.ts";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { SluiceError } from "../lib/errors.ts";
import { kvUnavailable } from "../lib/kv.ts";
import { PROMETHEUS_CONTENT_TYPE, renderPrometheus } from "../lib/stats/prometheus.ts";
import type { StatsSource } from "../lib/stats/kv_stats.ts";
import { describeIssues } from "../lib/http/validate.ts";
import { budgetOf, capReached } from "../lib/stats/budgets.ts";

const recentQuery = z.object({
  limit: z.coerce.number().int().min(1).max(1000).default(50),
});

/** Mounts the stats routes; without a readable stats store they answer 404 with a hint. */
export function statsRoute(deps: RouteDeps, stats: StatsSource | undefined): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  const noStore = { "cache-control": "no-store" };
  app.use("/stats", adminAuth(deps.config));
  app.use("/stats/*", adminAuth(deps.config));
  app.use("/metrics", adminAuth(deps.config));
  app.use("/stats", requireStats(stats, deps.kvFault));
  app.use("/stats/*", requireStats(stats, deps.kvFault));
  app.use("/metrics", requireStats(stats, deps.kvFault));
  app.get("/stats", async (c) => c.json(await stats!.report(), 200, noStore));
  app.get(
    "/stats/recent",
    zValidator("query", recentQuery, (result) => {
      if (!result.success) {
        throw new SluiceError(400, "invalid_request_error", describeIssues(result.error.issues));
      }
    }),
    async (c) => {
      const { limit } = c.req.valid("query");
      return c.json({ requests: await stats!.recent(limit) }, 200, noStore);
    },
  );
  app.get("/stats/keys/:id", async (c) => {
    const id = c.req.param("id");
    if (!/^([0-9a-f]{16}|anonymous)$/.test(id)) {
      throw new SluiceError(
        400,
        "invalid_request_error",
        "a key id is 16 hex digits (as /stats' cost_usd.by_key shows them) or anonymous",
      );
    }
    const budget = budgetOf(deps.config.keyBudgets, id);
    const [spend, totals] = await Promise.all([
      deps.spend.spend(id, deps.clock.now(), budget),
      stats!.keyTotals(id),
    ]);
    const reached = capReached(spend);
    return c.json(
      {
        ...spend,
        over_cap: reached ? reached.cap : null,
        all_time: totals,
      },
      200,
      noStore,
    );
  });
  app.get("/metrics", async (c) => {
    const text = renderPrometheus(await stats!.rows(), { writeFailures: stats!.writeFailures });
    return c.body(text, 200, { ...noStore, "content-type": PROMETHEUS_CONTENT_TYPE });
  });
  return app;
}

function requireStats(stats: StatsSource | undefined, kvFault: string | undefined) {
  return async (_c: unknown, next: () => Promise<void>) => {
    // A KV that failed to open is a fault to report, not stats switched off.
    if (!stats && kvFault) throw kvUnavailable("stats", kvFault);
    if (!stats) {
      throw new SluiceError(
        404,
        "not_found_error",
        "stats are off: this sluice was started without a KV stats store",
      );
    }
    await next();
  };
}
