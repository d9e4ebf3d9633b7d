/**
 * `GET /v1/models` and `GET /v1/models/:id`: forwarded as is (query string included), so
 * `client.models.list()` and `client.models.retrieve()` work against sluice. In replay mode the
 * list is `fixtures/models.json`.
 */
import { Hono } from "hono";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { forwardJson } from "../lib/forward.ts";

/** Mounts the models routes. */
export function modelsRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.get("/v1/models/:id?", async (c) => {
    const url = new URL(c.req.url);
    return await forwardJson(deps.upstream, {
      method: "GET",
      // The path as the caller sent it (the id stays percent-encoded), with its query string.
      path: url.pathname + url.search,
      body: new Uint8Array(),
      anthropicVersion: c.req.header("anthropic-version"),
      anthropicBeta: c.req.header("anthropic-beta"),
      authStyle: c.get("authStyle"),
      signal: c.req.raw.signal,
    });
  });
  return app;
}
