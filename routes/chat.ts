/**
 * `POST /chat`: thin route; the work is in lib/chat.ts.
 */
import { Hono } from "hono";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { handleChat } from "../lib/chat/chat.ts";
import { statsRequested } from "../lib/chat/encoding.ts";
import { conversationStoreFor } from "../lib/chat/conversations.ts";

/** Mounts `POST /chat`. */
export function chatRoute(deps: RouteDeps): Hono<AppEnv> {
  const store = conversationStoreFor(deps);
  const app = new Hono<AppEnv>();
  app.post("/chat", async (c) =>
    await handleChat(deps, store, {
      bodyText: await c.req.text(),
      accept: c.req.header("accept"),
      withStats: statsRequested(c.req.query("stats")),
      keyId: c.get("keyId"),
      authStyle: c.get("authStyle"),
      requestId: c.get("requestId"),
      startedAt: c.get("startedAt"),
      anthropicVersion: c.req.header("anthropic-version"),
      anthropicBeta: c.req.header("anthropic-beta"),
      fixture: c.req.header("x-sluice-fixture"),
      clientSignal: c.req.raw.signal,
    }));
  return app;
}
