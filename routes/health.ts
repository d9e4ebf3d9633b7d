/**
 * `GET /health`: liveness, no key needed. Says which upstream answers, never any secret.
 */
import { Hono } from "hono";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";

/** Mounts `GET /health`. */
export function healthRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.get("/health", (c) => c.json({ status: "ok", upstream: deps.upstream.mode }));
  return app;
}
