/**
 * sluice's app wired for a bench as lib/serve.ts wires it for main.ts: a KV stats sink, spend
 * summed in memory and written with the stats' interval, a lifecycle, a silent logger. The request
 * bench also runs this file against an older checkout's lib/ (`--before`), so it uses only what
 * lib/ has long exported; an older lib/ ignores the options it does not know.
 */
import { createApp } from "../lib/app.ts";
import type { Clock } from "../lib/clock.ts";
import type { Config } from "../lib/config.ts";
import { createLogger } from "../lib/log.ts";
import { createLifecycle } from "../lib/http/shutdown.ts";
import type { Upstream } from "../lib/proxy/upstream.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import { kvSpendStore } from "../lib/stats/budgets.ts";

/** Options for {@link benchApp}. */
export interface BenchAppOptions {
  config: Config;
  upstream: Upstream;
  kv: Deno.Kv;
  /** With the KV stats sink (default); BENCH_NO_STATS=1 in the environment leaves it out. */
  stats?: boolean;
  clock?: Clock;
}

/** What {@link benchApp} built: the app, and its stats sink to flush at the end of a bench. */
export interface BenchApp {
  app: ReturnType<typeof createApp>;
  stats?: ReturnType<typeof createKvStats>;
}

/** The app as main.ts serves it, over the given upstream and KV. */
export function benchApp(options: BenchAppOptions): BenchApp {
  const { config, upstream, kv, clock } = options;
  const logger = createLogger({ level: "silent" });
  const withStats = options.stats ?? !Deno.env.get("BENCH_NO_STATS");
  const stats = withStats
    ? createKvStats({ kv, logger, writeIntervalMs: config.statsWriteMs })
    : undefined;
  const spend = kvSpendStore(kv, { flushMs: config.statsWriteMs });
  const app = createApp({
    config,
    upstream,
    logger,
    kv,
    stats,
    spend,
    lifecycle: createLifecycle(),
    clock,
  });
  return { app, stats };
}
