/**
 * `POST /v1/messages`: Anthropic-compatible. The caller's body goes upstream byte for byte;
 * streamed answers come back byte for byte (pings and error events included) while the
 * accumulator taps them for stats.
 */
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { startCall } from "../lib/proxy/messages_call.ts";
import {
  callContext,
  disconnectPolicy,
  ON_DISCONNECT_HEADER,
  respondWithCall,
  RESUMABLE_HEADER,
  resumableRequested,
  upstreamRequestOf,
} from "../lib/proxy/call_http.ts";
import { readJsonBody, requireJsonContentType } from "../lib/http/validate.ts";

/**
 * The only fields sluice reads itself: `stream` (which answer to tap) and `model` (for stats).
 * Everything else (roles, block types, new parameters) is the upstream's to judge: sluice is
 * never stricter than the API, and the API's own 400 comes back unchanged.
 */
const messagesBody = z.looseObject({
  model: z.string().optional(),
  stream: z.boolean().optional(),
});

/** Mounts `POST /v1/messages`. */
export function messagesRoute(deps: RouteDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.post("/v1/messages", requireJsonContentType(), async (c) => {
    const { raw, body } = await readJsonBody(c, messagesBody);
    const resumable = resumableRequested(deps, c.req.header(RESUMABLE_HEADER)) &&
      body.stream === true;
    // A resumable stream that stopped when its client left would have nothing left to resume:
    // it finishes unless the caller says abort. Otherwise the SDKs' semantics: abort at once.
    const policy = disconnectPolicy(c.req.header(ON_DISCONNECT_HEADER)) ??
      (resumable ? "finish" : "abort");
    const context = callContext(deps, c);
    const call = await startCall({
      ...context,
      endpoint: "/v1/messages",
      model: body.model ?? null,
      request: upstreamRequestOf(c, raw, body.stream === true),
    });
    return respondWithCall(deps, call, {
      finishOnDisconnect: policy === "finish",
      resume: resumable
        ? {
          owner: context.keyId,
          meta: {
            endpoint: "/v1/messages",
            requestId: context.requestId,
            startedAt: context.startedAt,
            model: body.model ?? null,
            conversationId: null,
            message: null,
          },
        }
        : undefined,
    });
  });
  return app;
}
