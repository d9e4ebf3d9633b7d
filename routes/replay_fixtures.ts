/**
 * `GET /v1/replay/fixtures`, in replay mode only: the recorded answers there are, what each
 * carries, which ordinary requests get it and how to ask for it by name. Replay's own fetch
 * answers it (see lib/replay.ts), through the forwarder like any other `/v1/*` call; in live
 * mode this path is sluice's, not the API's, so it is a 404 that costs no upstream call.
 */
import { Hono } from "hono";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { SluiceError } from "../lib/errors.ts";

/** Mounts the live-mode answer of `GET /v1/replay/fixtures` (replay falls through). */
export function replayFixturesRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.get("/v1/replay/fixtures", async (_c, next) => {
    if (deps.upstream.mode === "replay") return await next();
    throw new SluiceError(
      404,
      "not_found_error",
      "GET /v1/replay/fixtures exists in replay mode only (no ANTHROPIC_API_KEY)",
    );
  });
  return app;
}
