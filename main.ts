/**
 * sluice's entry point: reads the configuration, builds the dependencies and serves the app.
 * Wiring only; everything else lives in lib/ and routes/.
 */
import { createApp } from "./lib/app.ts";
import { ConfigError, parseConfig } from "./lib/config.ts";
import { createLogger } from "./lib/log.ts";
import { createUpstreamFromConfig } from "./lib/proxy/upstream_from_config.ts";
import { openKv } from "./lib/kv.ts";
import { checkDefaultModel } from "./lib/proxy/model_check.ts";
import { createKvStats } from "./lib/stats/kv_stats.ts";
import { createLifecycle, installShutdown } from "./lib/http/shutdown.ts";

let config;
try {
  config = parseConfig(Deno.env.toObject());
} catch (error) {
  if (error instanceof ConfigError) {
    console.error(`sluice: ${error.message}`);
    Deno.exit(1);
  }
  throw error;
}

const logger = createLogger({
  level: config.logLevel,
  format: config.logFormat,
  secrets: [config.anthropicApiKey, ...config.apiKeys, config.adminKey],
});
const upstream = await createUpstreamFromConfig(config);

const kv = await openKv(config);
const stats = createKvStats({ kv, logger, writeIntervalMs: config.statsWriteMs });
const lifecycle = createLifecycle();
const app = createApp({ config, upstream, logger, kv, stats, lifecycle });

// `app.fetch` gets Deno.serve's handler info as Hono's `c.env`; the loopback-only rule reads the
// caller's address from it.
const server = Deno.serve({
  port: config.port,
  hostname: config.hostname,
  onListen: ({ hostname, port }) => {
    logger.info(`sluice listening on http://${hostname}:${port} (upstream: ${config.upstream})`);
    if (config.upstream === "replay") {
      logger.info("no ANTHROPIC_API_KEY: answering from recorded fixtures (replay mode)");
    }
    if (config.upstream === "live") {
      // Off the start-up path: serving does not wait for the answer.
      void checkDefaultModel(upstream, config.defaultModel, logger);
    }
    if (config.upstream === "live" && config.apiKeys.length === 0) {
      logger.warn(
        "live mode without SLUICE_API_KEYS: answering only callers on this machine (loopback); " +
          "set SLUICE_API_KEYS to serve others",
      );
    }
  },
}, app.fetch);

installShutdown({
  server,
  lifecycle,
  logger,
  graceMs: config.shutdownGraceMs,
  close: async () => {
    await stats.flush();
    kv.close();
  },
});
