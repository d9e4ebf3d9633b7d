/**
 * `POST /chat` and `GET /chat/streams/{id}`: thin routes; the work is in lib/chat/.
 */
import { type Context, Hono } from "hono";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { handleChat } from "../lib/chat/chat.ts";
import { statsRequested } from "../lib/chat/encoding.ts";
import { type ConversationStore, conversationStoreFor } from "../lib/chat/conversations.ts";
import { isStreamId, openResumedStream, parseEventId } from "../lib/chat/resume.ts";
import { recordCut } from "../lib/chat/record_cut.ts";
import { SluiceError } from "../lib/errors.ts";
import { requestText } from "../lib/http/request_body.ts";
import { disconnectPolicy, ON_DISCONNECT_HEADER } from "../lib/proxy/call_http.ts";
import { kvUnavailable } from "../lib/kv.ts";

/**
 * Mounts `POST /chat` and, with Deno KV, `GET /chat/streams/{id}`, which resumes `/chat`'s SSE
 * answers and the `/v1/messages` streams that asked for it (`x-sluice-resumable`) alike.
 */
export function chatRoute(deps: RouteDeps): Hono<AppEnv> {
  const store = conversationStoreFor(deps);
  const app = new Hono<AppEnv>();
  app.post("/chat", (c) => postChat(deps, store, c));
  app.get("/chat/streams/:id", (c) => resumeStream(deps, store, c));
  app.delete("/chat/streams/:id", (c) => stopStream(deps, c));
  return app;
}

/** `POST /chat`: the request as lib/chat/chat.ts reads it. */
async function postChat(
  deps: RouteDeps,
  store: ConversationStore | undefined,
  c: Context<AppEnv>,
): Promise<Response> {
  return await handleChat(deps, store, {
    bodyText: await requestText(c),
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
    onDisconnect: disconnectPolicy(c.req.header(ON_DISCONNECT_HEADER)),
  }, deps.streams);
}

/** `GET /chat/streams/{id}`: the stream's events after the one the client names. */
async function resumeStream(
  deps: RouteDeps,
  store: ConversationStore | undefined,
  c: Context<AppEnv, "/chat/streams/:id">,
): Promise<Response> {
  const streams = deps.streams;
  const id = c.req.param("id");
  const notFound = new SluiceError(
    404,
    "not_found_error",
    `stream ${JSON.stringify(id)} not found (it may have expired)`,
  );
  if (!streams) throw kvUnavailable("resumable streams", deps.kvFault);
  // `Last-Event-ID` is what EventSource sends on its own; `?after=` is for fetch and curl.
  const raw = c.req.header("last-event-id") ?? c.req.query("after");
  const after = raw === undefined ? 0 : parseEventId(raw);
  if (after === null) {
    throw new SluiceError(
      400,
      "invalid_request_error",
      "Last-Event-ID (or ?after=) must be the id of an event of this stream, a whole number",
    );
  }
  if (!isStreamId(id)) throw notFound;
  const keyId = c.get("keyId");
  const body = await openResumedStream({
    kv: streams.kv,
    owner: keyId,
    id,
    after,
    clock: deps.clock,
    settings: deps.config.resume,
    keepAliveMs: deps.config.keepAliveMs,
    local: streams.live.get(id),
    logger: deps.logger,
    onCut: (cut) => recordCut(deps, store, keyId, cut),
  });
  if (!body) throw notFound;
  return new Response(body, {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      "x-accel-buffering": "no",
      "x-content-type-options": "nosniff",
      "x-sluice-stream-id": id,
    },
  });
}

/**
 * `DELETE /chat/streams/{id}`. Stop: the answer's upstream call is aborted and nothing is stored
 * (as with x-sluice-on-disconnect: abort, but asked for explicitly, so a dropped connection can
 * still be finished and resumed). Only the instance writing the answer can stop it.
 */
async function stopStream(
  deps: RouteDeps,
  c: Context<AppEnv, "/chat/streams/:id">,
): Promise<Response> {
  const id = c.req.param("id");
  const live = deps.streams?.stops.get(id);
  if (!live || live.owner !== c.get("keyId")) {
    throw new SluiceError(
      404,
      "not_found_error",
      `stream ${JSON.stringify(id)} is not being written by this instance (it may have ended)`,
    );
  }
  await live.stop();
  return c.body(null, 204);
}
