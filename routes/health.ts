/**
 * `GET /health`: liveness, no key needed. Says which upstream answers, never any secret; 503
 * while shutting down, so a load balancer stops sending new requests first; `degraded` (still
 * 200) with the fault when Deno KV failed to open.
 */
import { Hono } from "hono";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";

/** Mounts `GET /health`. */
export function healthRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.get("/health", (c) => {
    if (deps.draining()) return c.json({ status: "draining", upstream: deps.upstream.mode }, 503);
    // Still 200: the Messages API works without KV, so a load balancer should keep sending.
    if (deps.kvFault) {
      return c.json({
        status: "degraded",
        upstream: deps.upstream.mode,
        kv: { ok: false, error: deps.kvFault },
      });
    }
    return c.json({ status: "ok", upstream: deps.upstream.mode });
  });
  return app;
}
