/**
 * Every other `/v1/*` call (`count_tokens`, batches, files, models, and endpoints the API adds
 * later): forwarded as it is with the server's key; see lib/forward.ts. Mounted after the routes
 * sluice handles itself, so a new API endpoint works through sluice without a release.
 */
import { Hono } from "hono";
import { readWhole } from "../lib/http/body_deadline.ts";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { forward } from "../lib/proxy/forward.ts";

/** Mounts the catch-all `/v1/*` forwarder. */
export function forwardRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.all("/v1/*", async (c) => {
    const { response, finished } = await forward({
      upstream: deps.upstream,
      clock: deps.clock,
      logger: deps.logger,
      request: c.req.raw,
      // Read whole by the body deadline when it was small and of a declared length.
      body: readWhole(c) ? await c.req.bytes() : undefined,
      startedAt: c.get("startedAt"),
      requestId: c.get("requestId"),
      keyId: c.get("keyId"),
      authStyle: c.get("authStyle"),
      upstreamBaseUrl: deps.upstream.mode === "live" ? deps.config.anthropicBaseUrl : undefined,
      cut: deps.lifecycle?.cut,
    });
    deps.record(finished);
    return response;
  });
  return app;
}
