/**
 * The types routes share: Hono's context variables and the dependencies each route gets.
 */
import type { AuthVariables } from "./http/auth.ts";
import type { Clock } from "./clock.ts";
import type { Config } from "./config.ts";
import type { Logger } from "./log.ts";
import type { RequestSummary } from "./stats/request_summary.ts";
import type { Lifecycle } from "./http/shutdown.ts";
import type { Upstream } from "./proxy/upstream.ts";
import type { ResumableStreams } from "./chat/resume.ts";
import type { SpendStore } from "./stats/budgets.ts";

/** Hono environment of sluice's app. */
export interface AppEnv {
  Variables: AuthVariables & {
    requestId: string;
    /** Request arrival on the injected clock. */
    startedAt: number;
  };
}

/** What every route may use. Built once by `createApp`. */
export interface RouteDeps {
  config: Config;
  upstream: Upstream;
  clock: Clock;
  logger: Logger;
  /** Hands a finished request to the stats sink, off the response path; never throws. */
  record(summary: Promise<RequestSummary>): void;
  /** Spend per gateway key (in KV when the app has one), for budgets and `/stats/keys/{id}`. */
  spend: SpendStore;
  /** Deno KV, when the app has one (stats, conversations, limits). */
  kv?: Deno.Kv;
  /** Resumable streams (with KV): `/chat`'s SSE answers and `/v1/messages` that opt in. */
  streams?: ResumableStreams;
  /** Why there is no KV, when opening it failed (see lib/kv.ts). */
  kvFault?: string;
  /** Whether the process is shutting down (main.ts gives a lifecycle; tests may not). */
  draining(): boolean;
  /** Graceful shutdown, for streams that end themselves when it cuts them. */
  lifecycle?: Pick<Lifecycle, "cut" | "adopt" | "track">;
}
