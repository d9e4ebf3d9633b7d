/**
 * `POST /v1/messages/count_tokens`: forwarded as is, so `client.messages.countTokens()` works
 * against sluice as against the API. In replay mode the answer is an estimate (see replay.ts).
 */
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { forwardJson } from "../lib/forward.ts";
import { jsonBody, requireJsonContentType } from "../lib/validate.ts";

/** What sluice checks before spending an upstream call; everything else passes through. */
const countTokensBody = z.looseObject({
  model: z.string().min(1),
  messages: z.array(
    z.looseObject({
      role: z.enum(["user", "assistant"]),
      content: z.union([z.string(), z.array(z.unknown())]),
    }),
  ).min(1),
});

/** Mounts `POST /v1/messages/count_tokens`. */
export function countTokensRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.post(
    "/v1/messages/count_tokens",
    requireJsonContentType(),
    jsonBody(countTokensBody),
    async (c) =>
      await forwardJson(deps.upstream, {
        path: "/v1/messages/count_tokens",
        body: new Uint8Array(await c.req.arrayBuffer()),
        anthropicVersion: c.req.header("anthropic-version"),
        anthropicBeta: c.req.header("anthropic-beta"),
        authStyle: c.get("authStyle"),
        signal: c.req.raw.signal,
      }),
  );
  return app;
}
