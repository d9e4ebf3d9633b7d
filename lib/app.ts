/**
 * `createApp(deps)`: sluice's Hono app, with middleware and routes mounted. Everything it needs
 * is passed in, so every test builds its own app.
 */
import type { Context } from "hono";
import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import { requestId } from "hono/request-id";
import { bodyLimit } from "hono/body-limit";
import { isUpload, streamingBodyLimit } from "./http/upload_limit.ts";
import {
  bodyReadDeadline,
  declaredLength,
  EAGER_READ_MAX_BYTES,
  readWhole,
} from "./http/body_deadline.ts";
import { BUFFER_BYTES } from "./proxy/forward.ts";
import { cors } from "hono/cors";
import { secureHeaders } from "hono/secure-headers";
import {
  createLimiter,
  kvLimitStore,
  type Limiter,
  limitMiddleware,
  memoryLimitStore,
} from "./http/limits.ts";
import { loopbackOnly } from "./http/local_only.ts";
import { allowedMethods } from "./http/method_not_allowed.ts";
import { STAINLESS_HEADERS } from "./proxy/pass_headers.ts";
import { type Lifecycle, lifecycleMiddleware } from "./http/shutdown.ts";
import type { AppEnv, RouteDeps } from "./app_env.ts";
import { gatewayAuth } from "./http/auth.ts";
import type { Clock } from "./clock.ts";
import { systemClock } from "./clock.ts";
import type { Config } from "./config.ts";
import { errorResponse, errorTypeForStatus, openaiErrorResponse, SluiceError } from "./errors.ts";
import { CHAT_COMPLETIONS_PATH } from "./openai/call.ts";
import type { Logger } from "./log.ts";
import { createLogger } from "./log.ts";
import { createRedactor } from "./redact.ts";
import type { StatsSink } from "./stats/request_summary.ts";
import { createRecorder } from "./stats/recorder.ts";
import { logRequest } from "./stats/request_log.ts";
import type { SpendStore } from "./stats/budgets.ts";
import { kvSpendStore, memorySpendStore } from "./stats/budgets.ts";
import { budgetGuard } from "./http/budget.ts";
import { RECORDED_ENDPOINTS } from "./stats/refusal.ts";
import type { Upstream } from "./proxy/upstream.ts";
import { healthRoute } from "../routes/health.ts";
import { messagesRoute } from "../routes/messages.ts";
import { chatCompletionsRoute } from "../routes/chat_completions.ts";
import { replayFixturesRoute } from "../routes/replay_fixtures.ts";
import { chatRoute } from "../routes/chat.ts";
import { forwardRoute } from "../routes/forward.ts";
import { conversationsRoute } from "../routes/conversations.ts";
import { pageRoute } from "../routes/page.ts";
import { dashboardRoute } from "../routes/dashboard.ts";
import { statsRoute } from "../routes/stats.ts";
import { isStatsSource } from "./stats/kv_stats.ts";
import { refusalSummary } from "./stats/refusal.ts";
import { LiveStreams } from "./chat/resume.ts";
import { createCommitBatcher } from "./chat/commit_batch.ts";

/** sluice's own id of a request, on every answer (a caller may send its own: it is kept). */
const REQUEST_ID_HEADER = "x-sluice-request-id";

/** What the app is built from. */
export interface AppDeps {
  config: Config;
  upstream: Upstream;
  clock?: Clock;
  logger?: Logger;
  stats?: StatsSink;
  kv?: Deno.Kv;
  /** Why there is no KV when opening it failed (a damaged file): reported by `/health`. */
  kvFault?: string;
  /** Where spend per key is counted; by default in `kv` when there is one. */
  spend?: SpendStore;
  /** Graceful shutdown: tracks stats records, can end running streams (main.ts gives one). */
  lifecycle?: Lifecycle;
  /** The per-key limiter; built from the config (over `kv` when given) unless passed. */
  limiter?: Limiter;
}

/**
 * Builds the app: every route behind the shared middleware, with its dependencies injected
 * (nothing is opened at import time). `main.ts` wires the real ones.
 *
 * @example An app in front of a fake upstream, asked without a server
 * ```ts
 * import assert from "node:assert/strict";
 * import { createApp } from "./app.ts";
 * import { parseConfig } from "./config.ts";
 * import { createUpstream } from "./proxy/upstream.ts";
 *
 * const upstream = createUpstream({
 *   mode: "live",
 *   apiKey: "sk-server-side",
 *   baseURL: "http://upstream.test",
 *   maxRetries: 0,
 *   fetch: () => Promise.resolve(Response.json({ data: [], has_more: false })),
 * });
 * const app = createApp({ config: parseConfig({ SLUICE_LOG_LEVEL: "silent" }), upstream });
 * const response = await app.request("/v1/models");
 * assert.equal(response.status, 200);
 * assert.deepEqual(await response.json(), { data: [], has_more: false });
 * ```
 */
export function createApp(deps: AppDeps): Hono<AppEnv> {
  const clock = deps.clock ?? systemClock;
  const logger = deps.logger ??
    createLogger({
      level: deps.config.logLevel,
      format: deps.config.logFormat,
      secrets: [deps.config.anthropicApiKey, ...deps.config.apiKeys, deps.config.adminKey],
    });
  const routeDeps = createRouteDeps(deps, clock, logger);

  const app = new Hono<AppEnv>();
  app.use(async (c, next) => {
    c.set("startedAt", clock.now());
    await next();
    // Hono's requestId puts its header only on the answers Hono builds (`c.json`, `c.text`); the
    // routes' own `Response`s (every proxied call, the errors) get it here, so every answer has it.
    const id = c.get("requestId");
    if (id && !c.res.headers.has(REQUEST_ID_HEADER)) {
      try {
        c.res.headers.set(REQUEST_ID_HEADER, id);
      } catch {
        // immutable headers (a response passed on as it came): it goes without
      }
    }
  });
  app.use(requestId({ headerName: REQUEST_ID_HEADER }));
  mountHardening(app, deps);
  mountRoutes(app, deps, routeDeps);
  mountErrorHandling(app, routeDeps);
  return app;
}

/** What the routes are given: the app's dependencies, the spend store, stats recording, KV streams. */
function createRouteDeps(deps: AppDeps, clock: Clock, logger: Logger): RouteDeps {
  const redact = createRedactor([deps.config.anthropicApiKey]);
  const spend = deps.spend ?? (deps.kv ? kvSpendStore(deps.kv) : memorySpendStore());
  const recorder = createRecorder({
    prices: deps.config.prices,
    logger,
    stats: deps.stats,
    spend,
    requestLog: (summary) => logRequest(logger, summary),
    // Upstream values (a request id, an error type, event names) may echo the server's key.
    scrub: (summary) => redact.value(summary),
  });
  return {
    config: deps.config,
    upstream: deps.upstream,
    clock,
    logger,
    kv: deps.kv,
    streams: deps.kv
      ? {
        kv: deps.kv,
        live: new LiveStreams(),
        batcher: createCommitBatcher(deps.kv),
        stops: new Map(),
      }
      : undefined,
    kvFault: deps.kvFault,
    spend,
    draining: () => deps.lifecycle?.draining ?? false,
    lifecycle: deps.lifecycle,
    record(summary) {
      // Off the response path (lib/stats/recorder.ts: after the last bytes, with the KV sink).
      // (Not inside `?.(…)`: it must run without a lifecycle too.)
      const work = recorder(summary);
      deps.lifecycle?.track(work);
    },
  };
}

/**
 * The routes, in order: the public ones (health, the pages, stats with their own key), then
 * gateway authentication, limits and budgets, then the API routes, the catch-all forward last.
 */
function mountRoutes(app: Hono<AppEnv>, deps: AppDeps, routeDeps: RouteDeps) {
  const { clock, logger, spend } = routeDeps;
  const stats = deps.stats;
  app.route("/", healthRoute(routeDeps));
  // The chat page is public (it holds nothing); its API calls carry the key the user types.
  app.route("/", pageRoute());
  // The dashboard page is public too; the /stats and /metrics it reads need the admin key.
  app.route("/", dashboardRoute());
  // Stats have their own key (SLUICE_ADMIN_KEY), not a gateway key: mounted before gatewayAuth.
  app.route("/", statsRoute(routeDeps, isStatsSource(stats) ? stats : undefined));
  app.use("*", gatewayAuth(deps.config.apiKeys));
  mountLimits(app, deps, clock, logger);
  mountBudgets(app, deps, spend, clock, logger);
  app.route("/", messagesRoute(routeDeps));
  app.route("/", chatCompletionsRoute(routeDeps));
  app.route("/", replayFixturesRoute(routeDeps));
  app.route("/", chatRoute(routeDeps));
  app.route("/", conversationsRoute(routeDeps));
  // Last: any other `/v1/*` call goes upstream as it is.
  app.route("/", forwardRoute(routeDeps));
}

/**
 * Unknown routes and thrown errors become answers in Anthropic's error shape (OpenAI's on
 * `/v1/chat/completions`), each recorded as a refusal.
 */
function mountErrorHandling(app: Hono<AppEnv>, routeDeps: RouteDeps) {
  let methodsOf: ((path: string) => string[]) | undefined;
  app.notFound((c) => {
    const requestId = c.get("requestId");
    // Every route is mounted by the time a request arrives: the table is built once, then.
    methodsOf ??= allowedMethods(app.routes);
    const allowed = methodsOf(c.req.path);
    if (allowed.length > 0) {
      return errorResponse(
        405,
        "not_found_error",
        `${c.req.path} is served with ${allowed.join(", ")}, not ${c.req.method}`,
        { requestId, headers: { allow: allowed.join(", ") } },
      );
    }
    return errorResponse(404, "not_found_error", `no route for ${c.req.method} ${c.req.path}`, {
      requestId,
    });
  });
  app.onError((error, c) => {
    const id = c.get("requestId");
    // OpenAI clients parse OpenAI's error shape; every other path answers in Anthropic's.
    const respond = c.req.path === CHAT_COMPLETIONS_PATH ? openaiErrorResponse : errorResponse;
    if (error instanceof SluiceError) recordRefusal(routeDeps, c, error.status, error.type);
    else if (error instanceof HTTPException) {
      recordRefusal(routeDeps, c, error.status, errorTypeForStatus(error.status));
    } else recordRefusal(routeDeps, c, 500, "api_error");
    if (error instanceof SluiceError) {
      return respond(error.status, error.type, error.message, {
        requestId: id,
        headers: error.headers,
      });
    }
    if (error instanceof HTTPException) {
      const status = error.status;
      return respond(status, errorTypeForStatus(status), error.message || "bad request", {
        requestId: id,
      });
    }
    routeDeps.logger.error("unhandled error", { id, error: String(error) });
    return respond(500, "api_error", "internal error in sluice", { requestId: id });
  });
}

/** Records a request sluice answered itself with an error (see refusalSummary). */
function recordRefusal(
  routeDeps: RouteDeps,
  c: Context<AppEnv>,
  status: number,
  errorType: string,
) {
  const info = {
    method: c.req.method,
    path: c.req.path,
    status,
    errorType,
    requestId: c.get("requestId"),
    startedAt: c.get("startedAt"),
  };
  if (!refusalSummary({ ...info, endedAt: info.startedAt })) return;
  const endedAt = routeDeps.clock.now();
  // Only a body already read (Hono caches it): an error path never reads a body itself.
  const cached = Object.keys(c.req.bodyCache).length > 0;
  const parsed = cached ? c.req.json() : Promise.resolve(undefined);
  routeDeps.record(
    Promise.resolve(parsed).catch(() => undefined).then((body) =>
      refusalSummary({ ...info, endedAt, body })!
    ),
  );
}

/** Hono's secure headers turned off for API answers (see mountHardening). */
const API_ONLY_SECURE_HEADERS = {
  crossOriginOpenerPolicy: false,
  originAgentCluster: false,
  referrerPolicy: false,
  xDnsPrefetchControl: false,
  xDownloadOptions: false,
  xFrameOptions: false,
  xPermittedCrossDomainPolicies: false,
  xXssProtection: false,
} as const;

/**
 * Middleware every request passes before any route: secure headers (a route's own value wins,
 * so the page keeps its CSP), CORS for the configured origins (preflights answered here, before
 * authentication), loopback-only serving in live mode without gateway keys, the body read
 * deadline, the body limit and the shutdown guard on streamed responses.
 */
function mountHardening(app: Hono<AppEnv>, deps: AppDeps) {
  const { config } = deps;
  // Documents (the pages, /chat, stats) get Hono's whole set. API answers (`/v1/*`: JSON and SSE
  // for programs, never rendered as a page) get the three that still matter when a browser loads
  // them: no sniffing, HSTS, and no cross-origin embedding. The whole set's 12 header writes per
  // response were 20-30 µs of a request's ~210 µs of CPU in bench/request_cpu_bench.ts.
  const documentHeaders = secureHeaders({ overwrite: false });
  const apiHeaders = secureHeaders({ overwrite: false, ...API_ONLY_SECURE_HEADERS });
  app.use((c, next) => (c.req.path.startsWith("/v1/") ? apiHeaders : documentHeaders)(c, next));
  if (config.corsOrigins.length > 0) {
    app.use(cors({
      origin: config.corsOrigins.includes("*") ? "*" : config.corsOrigins,
      allowMethods: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
      // What the SDKs send from a browser (`dangerouslyAllowBrowser`), and the fixture name.
      allowHeaders: [
        "content-type",
        "accept",
        "x-api-key",
        "authorization",
        "anthropic-version",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
        "idempotency-key",
        "x-sluice-fixture",
        // Resuming a stream, and a request's own disconnect policy.
        "last-event-id",
        "x-sluice-on-disconnect",
        "x-sluice-resumable",
        ...STAINLESS_HEADERS,
      ],
      exposeHeaders: [
        "request-id",
        REQUEST_ID_HEADER,
        "x-sluice-stream-id",
        "retry-after",
        "retry-after-ms",
      ],
      maxAge: 600,
    }));
  }
  if (config.upstream === "live" && config.apiKeys.length === 0) app.use(loopbackOnly());
  mountBodyLimits(app, config);
  if (deps.lifecycle) app.use(lifecycleMiddleware(deps.lifecycle));
}

/** The body read deadline, then the size limits: JSON bodies', and uploads' own. */
function mountBodyLimits(app: Hono<AppEnv>, config: Config) {
  // First, so the body limits' own reads are under the deadline too. Not large uploads: they
  // stream to the upstream untouched by JavaScript (a JS layer per chunk held ~57 MiB of garbage
  // for a 100 MB upload, tests/upload_memory_test.ts), and the upstream's own read deadline ends
  // them. A small one is read whole before the upstream call (forward.ts, so it can be retried):
  // it is read here, under the deadline, or a stalled one would hold its request for ever.
  const deadline = bodyReadDeadline({
    idleMs: config.bodyTimeoutMs,
    eagerMaxBytes: Math.min(EAGER_READ_MAX_BYTES, config.maxBodyBytes),
  });
  const smallUpload = Math.min(BUFFER_BYTES, config.maxFileBytes);
  const uploadDeadline = bodyReadDeadline({
    idleMs: config.bodyTimeoutMs,
    eagerMaxBytes: smallUpload,
  });
  app.use((c, next) => {
    if (!isUpload(c.req.method, c.req.path)) return deadline(c, next);
    const length = declaredLength(c.req.raw.headers);
    return length !== undefined && length <= smallUpload ? uploadDeadline(c, next) : next();
  });
  const jsonLimit = bodyLimit({
    maxSize: config.maxBodyBytes,
    onError: () => {
      throw new SluiceError(
        413,
        "request_too_large",
        `request body is larger than ${config.maxBodyBytes} bytes (SLUICE_MAX_BODY_BYTES)`,
      );
    },
  });
  // Uploads have their own, larger limit, enforced as the body streams through (Hono's
  // bodyLimit reads a body without content-length into memory to count it).
  const fileLimit = streamingBodyLimit({
    maxBytes: config.maxFileBytes,
    variable: "SLUICE_MAX_FILE_BYTES",
  });
  app.use((c, next) => {
    if (isUpload(c.req.method, c.req.path)) return fileLimit(c, next);
    // A body the deadline read whole was no larger than the limit (and Hono's bodyLimit would
    // build the body stream only to find it read).
    return readWhole(c) ? next() : jsonLimit(c, next);
  });
}

/**
 * Per-key limits (after authentication: keyed by key) on every route that calls the upstream
 * (any method on `/v1/*`, so `GET /v1/models` too) and every route that writes to KV.
 */
function mountLimits(app: Hono<AppEnv>, deps: AppDeps, clock: Clock, logger: Logger) {
  const { config } = deps;
  if (config.rateLimitRpm <= 0 && config.maxConcurrentStreams <= 0) return;
  if (!deps.kv && !deps.limiter) logger.warn("no KV: rate limits are held in memory, per isolate");
  const limiter = deps.limiter ?? createLimiter({
    store: deps.kv ? kvLimitStore(deps.kv) : memoryLimitStore(clock),
    rpm: config.rateLimitRpm,
    maxConcurrent: config.maxConcurrentStreams,
    clock,
    logger,
  });
  const limit = limitMiddleware({ limiter, logger });
  app.use("/v1/*", limit);
  app.on("POST", "/chat", limit);
  // (`/conversations/*` matches `/conversations` too.)
  app.on(["POST", "DELETE"], "/conversations/*", limit);
}

/** Daily and monthly USD caps per key (`SLUICE_KEY_BUDGETS`) on the endpoints that are costed. */
function mountBudgets(
  app: Hono<AppEnv>,
  deps: AppDeps,
  spend: SpendStore,
  clock: Clock,
  logger: Logger,
) {
  const budgets = deps.config.keyBudgets;
  if (Object.keys(budgets).length === 0) return;
  if (!deps.kv && !deps.spend) logger.warn("no KV: key budgets are counted per isolate");
  const guard = budgetGuard({ budgets, spend, clock });
  for (const path of RECORDED_ENDPOINTS) app.on("POST", path, guard);
}
