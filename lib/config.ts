/**
 * Configuration: every environment variable sluice reads is parsed and validated here, once.
 *
 * A bad value stops start-up with a message that names the variable. Nothing else in sluice
 * reads the environment, so tests build a `Config` with `parseConfig({...})`.
 */
import { z } from "zod";
import type { PriceTable } from "./stats/prices.ts";
import { loadPrices, PriceTableError } from "./stats/prices.ts";
import type { KeyBudgets } from "./stats/budgets.ts";
import { BudgetConfigError, parseKeyBudgets } from "./stats/budgets.ts";

const DEFAULT_BASE_URL = "https://api.anthropic.com";

const int = (min: number) => z.coerce.number().int().min(min);
const csv = z.string().transform((s) =>
  s.split(",").map((part) => part.trim()).filter((part) => part.length > 0)
);

/** The environment variables, with their defaults. Listed in README.md and .env.example. */
const envSchema = z.object({
  PORT: int(0).max(65535).default(8000),
  HOSTNAME: z.string().min(1).default("0.0.0.0"),
  ANTHROPIC_API_KEY: z.string().min(1).optional(),
  ANTHROPIC_BASE_URL: z.url().default(DEFAULT_BASE_URL),
  SLUICE_UPSTREAM: z.enum(["live", "replay"]).optional(),
  SLUICE_API_KEYS: csv.default([]),
  SLUICE_ADMIN_KEY: z.string().min(1).optional(),
  SLUICE_KV_PATH: z.string().min(1).optional(),
  SLUICE_FIXTURES_DIR: z.string().min(1).optional(),
  SLUICE_REPLAY_TTFT_MS: int(0).default(600),
  SLUICE_REPLAY_TOKENS_PER_SECOND: z.coerce.number().positive().default(60),
  SLUICE_REPLAY_SPEED: z.coerce.number().min(0).default(1),
  SLUICE_MAX_RETRIES: int(0).max(10).default(2),
  SLUICE_RETRY_MAX_WAIT_MS: int(0).default(10_000),
  SLUICE_FIRST_BYTE_TIMEOUT_MS: int(1).default(600_000),
  SLUICE_IDLE_TIMEOUT_MS: int(0).default(300_000),
  SLUICE_KEEPALIVE_MS: int(0).default(15_000),
  SLUICE_MAX_SSE_EVENT_CHARS: int(1024).default(8 * 1024 * 1024),
  SLUICE_MAX_BODY_BYTES: int(1).default(32 * 1024 * 1024),
  SLUICE_BODY_TIMEOUT_MS: int(0).default(30_000),
  // The connection guard (lib/http/connection_guard.ts) runs when either is above 0.
  SLUICE_HEADER_TIMEOUT_MS: int(0).default(0),
  SLUICE_MAX_CONNECTIONS_PER_ADDRESS: int(0).default(0),
  // The API takes files up to 500 MB; uploads stream through, so this costs no memory.
  SLUICE_MAX_FILE_BYTES: int(1).default(500 * 1024 * 1024),
  SLUICE_CORS_ORIGINS: csv.default([]),
  SLUICE_RATE_LIMIT_RPM: int(0).default(0),
  SLUICE_MAX_CONCURRENT_STREAMS: int(0).default(0),
  // With the three 1 s steps after it (see lib/http/shutdown.ts), under Docker's 10 s SIGKILL.
  SLUICE_SHUTDOWN_GRACE_MS: int(0).default(6_000),
  SLUICE_STATS_WRITE_MS: int(0).max(60_000).default(1_000),
  // Unset: main.ts's `--workers` flag decides (`deno task start` passes `auto`), else 1.
  SLUICE_WORKERS: z.union([z.literal("auto"), int(1).max(256)]).optional(),
  SLUICE_DEFAULT_MODEL: z.string().min(1).default("claude-sonnet-5-5"),
  SLUICE_CHAT_MAX_TOKENS: int(1).default(1024),
  SLUICE_CONVERSATION_MAX_TURNS: int(2).default(40),
  // A conversation is one Deno KV value, and KV caps a value at 64 KiB.
  SLUICE_CONVERSATION_MAX_BYTES: int(1024).max(60_000).default(60_000),
  SLUICE_CONVERSATION_TTL_HOURS: z.coerce.number().positive().default(24),
  // What one gateway key may keep: conversations, and bytes of them together (0: no limit).
  SLUICE_CONVERSATIONS_PER_KEY: int(0).default(100),
  SLUICE_CONVERSATION_BYTES_PER_KEY: int(0).default(2 * 1024 * 1024),
  SLUICE_ON_DISCONNECT: z.enum(["finish", "abort"]).default("finish"),
  SLUICE_RESUME_TTL_MS: int(1).default(10 * 60 * 1000),
  SLUICE_RESUME_FLUSH_MS: int(1).max(60_000).default(250),
  SLUICE_RESUME_STALE_MS: int(100).default(10_000),
  SLUICE_LOG_LEVEL: z.enum(["debug", "info", "warn", "error", "silent"]).default("info"),
  SLUICE_LOG_FORMAT: z.enum(["text", "json"]).default("text"),
  // Read after the schema: a path or inline JSON (lib/stats/prices.ts, lib/stats/budgets.ts).
  SLUICE_PRICES: z.string().optional(),
  SLUICE_KEY_BUDGETS: z.string().optional(),
});

/** Every environment variable sluice reads (the README and .env.example list each one). */
export const ENV_VARIABLES: readonly string[] = Object.keys(envSchema.shape);

/** sluice's validated configuration. */
export interface Config {
  port: number;
  /** Isolates serving the port (`SLUICE_WORKERS`; "auto": one per core); unset: see main.ts. */
  workers?: number | "auto";
  hostname: string;
  /** Where answers come from: the real API, or recorded fixtures. */
  upstream: "live" | "replay";
  /** The server's own Anthropic key; never sent to clients, never logged. */
  anthropicApiKey?: string;
  anthropicBaseUrl: string;
  /** Gateway keys callers must present; empty means any caller key is accepted. */
  apiKeys: string[];
  adminKey?: string;
  kvPath?: string;
  fixturesDir: string;
  replay: { ttftMs: number; tokensPerSecond: number; speed: number };
  maxRetries: number;
  /** Longest wait between upstream retries, even when `retry-after` asks for more (ms). */
  retryMaxWaitMs: number;
  /** Time limit for the upstream's response headers, per attempt (ms). */
  firstByteTimeoutMs: number;
  /** An upstream stream silent this long is cut with an error event (ms; 0: never). */
  idleTimeoutMs: number;
  /** SSE comment sent to the client after this much silence (ms; 0: never). */
  keepAliveMs: number;
  /** Most characters of one upstream SSE event sluice holds to parse (larger: passed unparsed). */
  maxSseEventChars: number;
  /** Largest request body accepted (bytes). */
  maxBodyBytes: number;
  /** Longest silence while a request body is read (ms; then 408 and the connection closed). */
  bodyTimeoutMs: number;
  /**
   * Longest a request head may take from its first byte, and an idle connection may stay open
   * (ms; then 408, or a silent close when idle; 0: no limit). Enforced by the connection guard.
   */
  headerTimeoutMs: number;
  /** Connections one client address may hold open at once, per isolate (0: no limit). */
  maxConnectionsPerAddress: number;
  /** Largest upload (`POST /v1/files`), streamed through. */
  maxFileBytes: number;
  /** Origins allowed by CORS ("*" for any); empty: no CORS headers. */
  corsOrigins: string[];
  /** Requests per minute per gateway key on the upstream-calling routes (0: no limit). */
  rateLimitRpm: number;
  /** In-flight upstream-calling requests per gateway key (0: no limit). */
  maxConcurrentStreams: number;
  /** On SIGINT/SIGTERM, how long running streams may go on before they are cut (ms). */
  shutdownGraceMs: number;
  /** Longest a finished request's stats wait to share one KV write with others (ms; 0: none). */
  statsWriteMs: number;
  defaultModel: string;
  /** `/chat`'s default `max_tokens`. */
  chatMaxTokens: number;
  /**
   * Bounds of a stored conversation (turns, bytes of history, hours kept after the last use) and
   * of what one gateway key keeps (conversations, bytes of all of them; 0: no limit).
   */
  conversation: {
    maxTurns: number;
    maxBytes: number;
    ttlHours: number;
    maxPerKey: number;
    maxBytesPerKey: number;
  };
  /** `/chat`, when the client leaves mid-answer: read the answer to its end, or stop the call. */
  onDisconnect: "finish" | "abort";
  /**
   * Resumable `/chat` streams (ms): how long one stays resumable after its answer ended, how
   * long an event waits to be written to KV, and the silence after which a writer is dead.
   */
  resume: { ttlMs: number; flushMs: number; staleMs: number };
  logLevel: "debug" | "info" | "warn" | "error" | "silent";
  /** Log lines as text or as one JSON object each. */
  logFormat: "text" | "json";
  /** USD per million tokens by model: lib/stats/prices.json with `SLUICE_PRICES` applied. */
  prices: PriceTable;
  /** Daily and monthly USD caps per gateway key id (`SLUICE_KEY_BUDGETS`; empty: none). */
  keyBudgets: KeyBudgets;
  /** True when running on Deno Deploy (detected from its environment). */
  onDeploy: boolean;
}

/** Raised for an invalid environment; its message names the variable. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Where the bundled fixtures live, next to this module. */
export const BUNDLED_FIXTURES_DIR = new URL("../fixtures/", import.meta.url);

/**
 * Parses an environment (a plain record, so tests need not touch `Deno.env`).
 * Empty strings count as unset, as `.env` files often leave them.
 */
export function parseConfig(
  env: Record<string, string | undefined>,
  options: { readTextFile?: (path: string) => string } = {},
): Config {
  const present = Object.fromEntries(
    Object.entries(env).filter(([key, value]) => key in envSchema.shape && value !== ""),
  );
  const parsed = envSchema.safeParse(present);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) =>
      `${issue.path.join(".")}: ${issue.message} (got ${
        JSON.stringify(present[String(issue.path[0])])
      })`
    );
    throw new ConfigError(`invalid environment:\n  ${problems.join("\n  ")}`);
  }
  const e = parsed.data;
  const upstream = e.SLUICE_UPSTREAM ?? (e.ANTHROPIC_API_KEY ? "live" : "replay");
  if (upstream === "live" && !e.ANTHROPIC_API_KEY) {
    throw new ConfigError("SLUICE_UPSTREAM=live needs ANTHROPIC_API_KEY");
  }
  if (upstream === "live" && isOnDeploy(env) && e.SLUICE_API_KEYS.length === 0) {
    // On Deploy the server is public: without gateway keys, anyone could spend the API key.
    throw new ConfigError(
      "on Deno Deploy, live mode needs SLUICE_API_KEYS, or anyone could spend ANTHROPIC_API_KEY",
    );
  }
  return {
    ...fileSettings(e.SLUICE_PRICES, e.SLUICE_KEY_BUDGETS, options.readTextFile),
    port: e.PORT,
    workers: e.SLUICE_WORKERS,
    hostname: e.HOSTNAME,
    upstream,
    anthropicApiKey: e.ANTHROPIC_API_KEY,
    anthropicBaseUrl: e.ANTHROPIC_BASE_URL.replace(/\/+$/, ""),
    apiKeys: e.SLUICE_API_KEYS,
    adminKey: e.SLUICE_ADMIN_KEY,
    kvPath: e.SLUICE_KV_PATH,
    fixturesDir: e.SLUICE_FIXTURES_DIR ?? BUNDLED_FIXTURES_DIR.pathname,
    replay: {
      ttftMs: e.SLUICE_REPLAY_TTFT_MS,
      tokensPerSecond: e.SLUICE_REPLAY_TOKENS_PER_SECOND,
      speed: e.SLUICE_REPLAY_SPEED,
    },
    maxRetries: e.SLUICE_MAX_RETRIES,
    retryMaxWaitMs: e.SLUICE_RETRY_MAX_WAIT_MS,
    firstByteTimeoutMs: e.SLUICE_FIRST_BYTE_TIMEOUT_MS,
    idleTimeoutMs: e.SLUICE_IDLE_TIMEOUT_MS,
    keepAliveMs: e.SLUICE_KEEPALIVE_MS,
    maxSseEventChars: e.SLUICE_MAX_SSE_EVENT_CHARS,
    maxBodyBytes: e.SLUICE_MAX_BODY_BYTES,
    bodyTimeoutMs: e.SLUICE_BODY_TIMEOUT_MS,
    headerTimeoutMs: e.SLUICE_HEADER_TIMEOUT_MS,
    maxConnectionsPerAddress: e.SLUICE_MAX_CONNECTIONS_PER_ADDRESS,
    maxFileBytes: e.SLUICE_MAX_FILE_BYTES,
    corsOrigins: e.SLUICE_CORS_ORIGINS,
    rateLimitRpm: e.SLUICE_RATE_LIMIT_RPM,
    maxConcurrentStreams: e.SLUICE_MAX_CONCURRENT_STREAMS,
    shutdownGraceMs: e.SLUICE_SHUTDOWN_GRACE_MS,
    statsWriteMs: e.SLUICE_STATS_WRITE_MS,
    defaultModel: e.SLUICE_DEFAULT_MODEL,
    chatMaxTokens: e.SLUICE_CHAT_MAX_TOKENS,
    conversation: {
      maxTurns: e.SLUICE_CONVERSATION_MAX_TURNS,
      maxBytes: e.SLUICE_CONVERSATION_MAX_BYTES,
      ttlHours: e.SLUICE_CONVERSATION_TTL_HOURS,
      maxPerKey: e.SLUICE_CONVERSATIONS_PER_KEY,
      maxBytesPerKey: e.SLUICE_CONVERSATION_BYTES_PER_KEY,
    },
    onDisconnect: e.SLUICE_ON_DISCONNECT,
    resume: {
      ttlMs: e.SLUICE_RESUME_TTL_MS,
      flushMs: e.SLUICE_RESUME_FLUSH_MS,
      staleMs: e.SLUICE_RESUME_STALE_MS,
    },
    logLevel: e.SLUICE_LOG_LEVEL,
    logFormat: e.SLUICE_LOG_FORMAT,
    onDeploy: isOnDeploy(env),
  };
}

/** The settings given as JSON (inline or a path); an error names the variable. */
function fileSettings(
  prices: string | undefined,
  budgets: string | undefined,
  readTextFile?: (path: string) => string,
): Pick<Config, "prices" | "keyBudgets"> {
  try {
    return {
      prices: loadPrices(prices, readTextFile),
      keyBudgets: parseKeyBudgets(budgets, readTextFile),
    };
  } catch (error) {
    if (error instanceof PriceTableError) throw new ConfigError(`SLUICE_PRICES: ${error.message}`);
    if (error instanceof BudgetConfigError) {
      throw new ConfigError(`SLUICE_KEY_BUDGETS: ${error.message}`);
    }
    throw error;
  }
}

/** Deno Deploy sets `DENO_DEPLOYMENT_ID` (and `DENO_DEPLOY` on newer platforms). */
function isOnDeploy(env: Record<string, string | undefined>): boolean {
  return Boolean(env.DENO_DEPLOYMENT_ID || env.DENO_DEPLOY);
}
