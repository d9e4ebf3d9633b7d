/**
 * Configuration: every environment variable sluice reads is parsed and validated here, once.
 *
 * A bad value stops start-up with a message that names the variable. Nothing else in sluice
 * reads the environment, so tests build a `Config` with `parseConfig({...})`.
 */
import { z } from "zod";

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
  SLUICE_DEFAULT_MODEL: z.string().min(1).default("claude-sonnet-4-5-20250929"),
  SLUICE_CHAT_MAX_TOKENS: int(1).default(1024),
  SLUICE_CONVERSATION_MAX_TURNS: int(2).default(40),
  // A conversation is one Deno KV value, and KV caps a value at 64 KiB.
  SLUICE_CONVERSATION_MAX_BYTES: int(1024).max(60_000).default(60_000),
  SLUICE_CONVERSATION_TTL_HOURS: z.coerce.number().positive().default(24),
  SLUICE_LOG_LEVEL: z.enum(["debug", "info", "warn", "error", "silent"]).default("info"),
});

/** sluice's validated configuration. */
export interface Config {
  port: number;
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
  defaultModel: string;
  /** `/chat`'s default `max_tokens`. */
  chatMaxTokens: number;
  /** Bounds of a stored conversation: turns, bytes of history, hours kept after the last use. */
  conversation: { maxTurns: number; maxBytes: number; ttlHours: number };
  logLevel: "debug" | "info" | "warn" | "error" | "silent";
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
export function parseConfig(env: Record<string, string | undefined>): Config {
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
  return {
    port: e.PORT,
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
    defaultModel: e.SLUICE_DEFAULT_MODEL,
    chatMaxTokens: e.SLUICE_CHAT_MAX_TOKENS,
    conversation: {
      maxTurns: e.SLUICE_CONVERSATION_MAX_TURNS,
      maxBytes: e.SLUICE_CONVERSATION_MAX_BYTES,
      ttlHours: e.SLUICE_CONVERSATION_TTL_HOURS,
    },
    logLevel: e.SLUICE_LOG_LEVEL,
    onDeploy: Boolean(env.DENO_DEPLOYMENT_ID || env.DENO_DEPLOY),
  };
}
