/**
 * One isolate serving sluice: the dependencies built from the configuration, `createApp`, and
 * `Deno.serve` with graceful shutdown. main.ts runs it once, or once per worker (workers.ts).
 */
import { createApp } from "./app.ts";
import type { Config } from "./config.ts";
import { createLogger, type Logger } from "./log.ts";
import { createUpstreamFromConfig } from "./proxy/upstream_from_config.ts";
import { openKvOrFault } from "./kv.ts";
import { checkDefaultModel } from "./proxy/model_check.ts";
import { createKvStats } from "./stats/kv_stats.ts";
import { kvSpendStore } from "./stats/budgets.ts";
import { createLifecycle, installShutdown, type ShutdownHandle } from "./http/shutdown.ts";
import { serveGuarded } from "./http/connection_guard.ts";

/**
 * sluice could not start for a reason its operator can fix (a port in use, a KV store the
 * workers cannot share): main.ts prints the message as one line and exits 1, no stack trace.
 */
export class StartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StartError";
  }
}

/** Options for {@link serveSluice}. */
export interface ServeOptions {
  /** The port to bind (the configured one by default; workers after the first get the first's). */
  port?: number;
  /** `SO_REUSEPORT`, so several isolates accept on one port (every worker sets it). */
  reusePort?: boolean;
  /**
   * Whether this isolate logs the start-up lines as soon as it listens (default). Workers wait:
   * the first one logs them through the returned `announce` once every worker listens.
   */
  announce?: boolean;
  /** Called with the bound port once listening. */
  onListen?: (port: number) => void;
  /** Signals that start the shutdown; none in a worker (the main thread tells it). */
  signals?: Deno.Signal[];
  /** How the shutdown ends the isolate; `Deno.exit` by default. */
  exit?: (code: number) => void;
  /** How many isolates serve the port, for the start-up line. */
  workers?: number;
}

/** Serves sluice in this isolate; resolves once it listens. */
export async function serveSluice(
  config: Config,
  options: ServeOptions = {},
): Promise<{ shutdown: ShutdownHandle; port: number; announce(): void }> {
  const logger = createLogger({
    level: config.logLevel,
    format: config.logFormat,
    secrets: [config.anthropicApiKey, ...config.apiKeys, config.adminKey],
  });
  const announce = options.announce ?? true;
  const upstream = await createUpstreamFromConfig(config);
  // A damaged KV file leaves sluice running without KV (the fault shows in /health).
  const { kv, fault: kvFault } = await openKvOrFault(config, logger);
  const stats = kv
    ? createKvStats({
      kv,
      logger,
      writeIntervalMs: config.statsWriteMs,
      knownModels: [config.defaultModel],
    })
    : undefined;
  // Spend per key is summed in memory and written with the stats' interval (flushed at shutdown).
  const spend = kv
    ? kvSpendStore(kv, {
      flushMs: config.statsWriteMs,
      onError: (error) =>
        logger.warn("spend write failed; kept for the next", { error: String(error) }),
    })
    : undefined;
  const lifecycle = createLifecycle();
  const app = createApp({ config, upstream, logger, kv, kvFault, stats, spend, lifecycle });

  let listening!: (port: number) => void;
  const bound = new Promise<number>((resolve) => (listening = resolve));
  // `app.fetch` gets Deno.serve's handler info as Hono's `c.env`; the loopback-only rule reads
  // the caller's address from it (the connection guard passes the real client's on).
  let server: ReturnType<typeof listen>;
  try {
    server = listen(config, options, logger, app.fetch, ({ hostname, port }) => {
      listening(port);
      options.onListen?.(port);
      if (announce) announceNow(hostname, port);
    });
  } catch (error) {
    await Promise.all([stats?.flush(), spend?.flush()]).catch(() => {});
    kv?.close();
    throw listenError(error, config.hostname, options.port ?? config.port);
  }
  function announceNow(hostname: string, port: number) {
    startupLines(config, logger, hostname, port, options.workers ?? 1);
    if (config.upstream === "live") {
      // Off the start-up path: serving does not wait for the answer.
      void checkDefaultModel(upstream, config.defaultModel, logger);
    }
  }

  const shutdown = installShutdown({
    server,
    lifecycle,
    logger,
    graceMs: config.shutdownGraceMs,
    signals: options.signals,
    exit: options.exit,
    close: async () => {
      const spent = spend?.flush().catch((error) =>
        logger.warn("spend write failed at shutdown", { error: String(error) })
      );
      await Promise.all([stats?.flush(), spent]);
      kv?.close();
    },
  });
  const port = await bound;
  return { shutdown, port, announce: () => announceNow(server.addr.hostname, port) };
}

/**
 * Whether the connection guard (header deadline, connections per address) fronts the server:
 * when either setting is on, except on Deno Deploy, which owns the connections itself.
 */
export function guardWanted(config: Config): boolean {
  return !config.onDeploy && (config.headerTimeoutMs > 0 || config.maxConnectionsPerAddress > 0);
}

/**
 * Listens on the configured address: behind the connection guard when wanted, else (or when
 * the guard cannot listen: logged) with `Deno.serve` alone.
 */
function listen(
  config: Config,
  options: ServeOptions,
  logger: Logger,
  handler: Deno.ServeHandler<Deno.NetAddr>,
  onListen: (addr: Deno.NetAddr) => void,
): { shutdown(): Promise<void>; finished: Promise<void>; addr: Deno.NetAddr } {
  const port = options.port ?? config.port;
  const { hostname } = config;
  if (guardWanted(config)) {
    try {
      return serveGuarded({
        hostname,
        port,
        reusePort: options.reusePort,
        headerTimeoutMs: config.headerTimeoutMs,
        maxConnectionsPerAddress: config.maxConnectionsPerAddress,
        logger,
        onListen,
      }, handler);
    } catch (error) {
      // A port in use fails `Deno.serve` the same way: say so once, from there.
      if (error instanceof Deno.errors.AddrInUse) throw error;
      logger.warn(
        `connection guard off (${String(error)}): serving without the header deadline ` +
          "and the connection cap",
      );
    }
  }
  return Deno.serve({ port, hostname, reusePort: options.reusePort, onListen }, handler);
}

/** What failed `Deno.serve` means for its operator, when it is one of theirs to fix. */
function listenError(error: unknown, hostname: string, port: number): unknown {
  const where = `${hostname}:${port}`;
  if (error instanceof Deno.errors.AddrInUse) {
    return new StartError(
      `${where} is already in use (another sluice, or another server): stop it, or set PORT ` +
        "to a free port",
    );
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return new StartError(`${where} is not an address of this machine: check HOSTNAME`);
  }
  if (error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.NotCapable) {
    return new StartError(`not allowed to listen on ${where}: ${(error as Error).message}`);
  }
  return error;
}

function startupLines(
  config: Config,
  logger: Logger,
  hostname: string,
  port: number,
  workers: number,
) {
  const isolates = workers > 1 ? `, ${workers} workers` : "";
  logger.info(
    `sluice listening on http://${hostname}:${port} (upstream: ${config.upstream}${isolates})`,
  );
  if (config.upstream === "replay") {
    logger.info("no ANTHROPIC_API_KEY: answering from recorded fixtures (replay mode)");
  }
  if (config.upstream === "live" && config.apiKeys.length === 0) {
    logger.warn(
      "live mode without SLUICE_API_KEYS: answering only callers on this machine (loopback); " +
        "set SLUICE_API_KEYS to serve others",
    );
  }
}
