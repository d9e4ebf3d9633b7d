/**
 * `POST /chat` and `GET /chat/streams/{id}`: thin routes; the work is in lib/chat/.
 */
import { Hono } from "hono";
import type { AppEnv, RouteDeps } from "../lib/app_env.ts";
import { type ChatStreams, handleChat } from "../lib/chat/chat.ts";
import { statsRequested } from "../lib/chat/encoding.ts";
import { type ConversationStore, conversationStoreFor } from "../lib/chat/conversations.ts";
import {
  type CutStream,
  isStreamId,
  LiveStreams,
  openResumedStream,
  parseEventId,
} from "../lib/chat/resume.ts";
import { SluiceError } from "../lib/errors.ts";
import { kvUnavailable } from "../lib/kv.ts";
import { tokenUsage } from "../lib/stats/request_summary.ts";
import { ON_DISCONNECT_HEADER } from "../lib/proxy/call_http.ts";

/**
 * A request's own disconnect policy: a client whose Stop button means "stop paying" sends
 * `x-sluice-on-disconnect: abort`; anything else leaves `SLUICE_ON_DISCONNECT` in charge.
 */
function disconnectPolicy(value: string | undefined): "finish" | "abort" | undefined {
  const policy = value?.trim().toLowerCase();
  return policy === "finish" || policy === "abort" ? policy : undefined;
}

/** Mounts `POST /chat` and, with Deno KV, `GET /chat/streams/{id}`. */
export function chatRoute(deps: RouteDeps): Hono<AppEnv> {
  const store = conversationStoreFor(deps);
  const streams: ChatStreams | undefined = deps.kv
    ? { kv: deps.kv, live: new LiveStreams(), stops: new Map() }
    : undefined;
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
      onDisconnect: disconnectPolicy(c.req.header(ON_DISCONNECT_HEADER)),
    }, streams));

  app.get("/chat/streams/:id", async (c) => {
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
  });
  // Stop: the answer's upstream call is aborted and nothing is stored (as with
  // x-sluice-on-disconnect: abort, but asked for explicitly, so a dropped connection can still be
  // finished and resumed). Only the instance writing the answer can stop it.
  app.delete("/chat/streams/:id", async (c) => {
    const id = c.req.param("id");
    const live = streams?.stops.get(id);
    if (!live || live.owner !== c.get("keyId")) {
      throw new SluiceError(
        404,
        "not_found_error",
        `stream ${JSON.stringify(id)} is not being written by this instance (it may have ended)`,
      );
    }
    await live.stop();
    return c.body(null, 204);
  });
  return app;
}

/**
 * A stream whose writer died: its conversation gets the buffered part of the answer, marked
 * incomplete, and the stats a request with outcome `incomplete` (the dead instance recorded
 * nothing; its usage is unknown here and counts as 0).
 */
async function recordCut(
  deps: RouteDeps,
  store: ConversationStore | undefined,
  keyId: string,
  { head, partialText }: CutStream,
): Promise<void> {
  const now = deps.clock.now();
  deps.record(Promise.resolve({
    id: head.requestId,
    endpoint: "/chat",
    streaming: true,
    model: head.model,
    outcome: "incomplete",
    status: 200,
    retries: 0,
    startedAt: head.startedAt,
    ttftMs: null,
    totalMs: now - head.startedAt,
    upstreamTtftMs: null,
    usage: tokenUsage(undefined),
    stopReason: null,
    events: {},
    keyId,
  }));
  // An empty assistant turn could not be sent upstream again: then nothing is stored.
  if (!store || !head.conversationId || head.message === null || partialText === "") return;
  await store.append(keyId, head.conversationId, [
    { role: "user", content: head.message },
    { role: "assistant", content: partialText, incomplete: true },
  ]);
}
