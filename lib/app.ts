/**
 * `createApp(deps)`: sluice's Hono app, with middleware and routes mounted. Everything it needs
 * is passed in, so every test builds its own app.
 */
import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import { requestId } from "hono/request-id";
import type { AppEnv, RouteDeps } from "./app_env.ts";
import { gatewayAuth } from "./auth.ts";
import type { Clock } from "./clock.ts";
import { systemClock } from "./clock.ts";
import type { Config } from "./config.ts";
import { errorResponse, errorTypeForStatus, SluiceError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { createLogger } from "./log.ts";
import type { StatsSink } from "./request_summary.ts";
import type { Upstream } from "./upstream.ts";
import { healthRoute } from "../routes/health.ts";
import { messagesRoute } from "../routes/messages.ts";
import { chatRoute } from "../routes/chat.ts";
import { conversationsRoute } from "../routes/conversations.ts";
import { pageRoute } from "../routes/page.ts";

/** What the app is built from. */
export interface AppDeps {
  config: Config;
  upstream: Upstream;
  clock?: Clock;
  logger?: Logger;
  stats?: StatsSink;
  kv?: Deno.Kv;
}

/** Builds the app. */
export function createApp(deps: AppDeps): Hono<AppEnv> {
  const clock = deps.clock ?? systemClock;
  const logger = deps.logger ??
    createLogger({ level: deps.config.logLevel, secrets: [deps.config.anthropicApiKey] });
  const stats = deps.stats;
  const routeDeps: RouteDeps = {
    config: deps.config,
    upstream: deps.upstream,
    clock,
    logger,
    kv: deps.kv,
    record(summary) {
      // Off the response path: a slow or failing store never delays or fails a client.
      summary
        .then((s) => stats?.record(s))
        .catch((error) => logger.warn("stats record failed", { error: String(error) }));
    },
  };

  const app = new Hono<AppEnv>();
  app.use(async (c, next) => {
    c.set("startedAt", clock.now());
    await next();
  });
  app.use(requestId({ headerName: "x-sluice-request-id" }));

  app.route("/", healthRoute(routeDeps));
  // The chat page is public (it holds nothing); its API calls carry the key the user types.
  app.route("/", pageRoute());
  app.use("*", gatewayAuth(deps.config.apiKeys));
  app.route("/", messagesRoute(routeDeps));
  app.route("/", chatRoute(routeDeps));
  app.route("/", conversationsRoute(routeDeps));

  app.notFound((c) =>
    errorResponse(404, "not_found_error", `no route for ${c.req.method} ${c.req.path}`, {
      requestId: c.get("requestId"),
    })
  );
  app.onError((error, c) => {
    const id = c.get("requestId");
    if (error instanceof SluiceError) {
      return errorResponse(error.status, error.type, error.message, {
        requestId: id,
        headers: error.headers,
      });
    }
    if (error instanceof HTTPException) {
      const status = error.status;
      return errorResponse(status, errorTypeForStatus(status), error.message || "bad request", {
        requestId: id,
      });
    }
    logger.error("unhandled error", { id, error: String(error) });
    return errorResponse(500, "api_error", "internal error in sluice", { requestId: id });
  });
  return app;
}
