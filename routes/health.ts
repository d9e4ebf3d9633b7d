/**
 * `GET /health`: liveness, no key needed. Says which upstream answers, never any secret; 503
 * while shutting down, so a load balancer stops sending new requests first.
 */
import { Hono } from "hono";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";

/** Mounts `GET /health`. */
export function healthRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.get(
    "/health",
    (c) =>
      deps.draining()
        ? c.json({ status: "draining", upstream: deps.upstream.mode }, 503)
        : c.json({ status: "ok", upstream: deps.upstream.mode }),
  );
  return app;
}
