/**
 * `GET /v1/replay/fixtures`, in replay mode only: the recorded answers there are, what each
 * carries, which ordinary requests get it and how to ask for it by name (answered by replay's
 * own fetch, see lib/replay.ts). In live mode there are no fixtures: a 404.
 */
import { Hono } from "hono";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { errorResponse } from "../lib/errors.ts";
import { forwardJson } from "../lib/forward.ts";

/** Mounts `GET /v1/replay/fixtures`. */
export function replayFixturesRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.get("/v1/replay/fixtures", async (c) => {
    if (deps.upstream.mode !== "replay") {
      return errorResponse(
        404,
        "not_found_error",
        "GET /v1/replay/fixtures exists in replay mode only (no ANTHROPIC_API_KEY)",
        { requestId: c.get("requestId") },
      );
    }
    return await forwardJson(deps.upstream, {
      method: "GET",
      path: "/v1/replay/fixtures",
      body: new Uint8Array(),
      signal: c.req.raw.signal,
    });
  });
  return app;
}
