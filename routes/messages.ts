/**
 * `POST /v1/messages`: Anthropic-compatible. The caller's body goes upstream byte for byte;
 * streamed answers come back byte for byte (pings and error events included) while the
 * accumulator taps them for stats.
 */
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { startCall } from "../lib/messages_call.ts";
import { upstreamHeaders } from "../lib/pass_headers.ts";
import { jsonBody, requireJsonContentType } from "../lib/validate.ts";

/**
 * The only fields sluice reads itself: `stream` (which answer to tap) and `model` (for stats).
 * Everything else (roles, block types, new parameters) is the upstream's to judge: sluice is
 * never stricter than the API, and the API's own 400 comes back unchanged.
 */
const messagesBody = z.looseObject({
  model: z.string().optional(),
  stream: z.boolean().optional(),
});

/** SSE response headers that stop proxies from buffering or transforming the stream. */
export const SSE_HEADERS = {
  "cache-control": "no-cache, no-transform",
  "x-accel-buffering": "no",
};

/** Mounts `POST /v1/messages`. */
export function messagesRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.post("/v1/messages", requireJsonContentType(), jsonBody(messagesBody), async (c) => {
    const startedAt = c.get("startedAt");
    const url = new URL(c.req.url);
    const body = c.req.valid("json");
    const raw = new Uint8Array(await c.req.arrayBuffer());
    const stream = body.stream === true;
    const call = await startCall({
      upstream: deps.upstream,
      clock: deps.clock,
      logger: deps.logger,
      startedAt,
      endpoint: "/v1/messages",
      requestId: c.get("requestId"),
      model: body.model ?? null,
      keyId: c.get("keyId"),
      request: {
        // The path as the caller sent it: `?beta=true` and any other query string included.
        path: url.pathname + url.search,
        body: raw,
        stream,
        headers: upstreamHeaders(c.req.raw.headers),
        authStyle: c.get("authStyle"),
        fixture: c.req.header("x-sluice-fixture"),
      },
      // Watched only until the answer is handed over; the stream's cancel takes over then.
      clientSignal: c.req.raw.signal,
      // The tap ends the stream itself at shutdown (no guard stream around it).
      cut: deps.lifecycle?.cut,
    });
    deps.record(call.finished);
    if (call.kind === "stream") {
      deps.lifecycle?.adopt(call.stream!, call.finished);
      for (const [key, value] of Object.entries(SSE_HEADERS)) call.headers.set(key, value);
      return new Response(call.stream, { status: call.status, headers: call.headers });
    }
    return new Response(call.body, { status: call.status, headers: call.headers });
  });
  return app;
}
