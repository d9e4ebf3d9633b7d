/**
 * `POST /chat`: the request people type, answered as plain text, small SSE events or JSON.
 *
 * It is a view over the same call `/v1/messages` makes (`startCall`): same upstream, same tap,
 * same accumulator, same stats (recorded with endpoint `/chat`). With a `conversation_id`, the
 * stored history goes upstream before the new message, and the exchange is stored once the
 * answer is complete.
 */
import { bufferedResponse } from "../http/response_end.ts";
import type { RouteDeps } from "../app_env.ts";
import type { ChatFormat } from "./encoding.ts";
import { chatFormat } from "./encoding.ts";
import { chatJsonAnswer, parseMessage } from "./json.ts";
import type { ChatBody } from "./request.ts";
import { buildMessagesBody, encodeJson, parseChatBody } from "./request.ts";
import type { ChatView } from "./view.ts";
import { chatDone, createChatView, messageText } from "./view.ts";
import type { Conversation, ConversationStore, Turn } from "./conversations.ts";
import { errorBody, SluiceError, statusForErrorType } from "../errors.ts";
import { kvUnavailable } from "../kv.ts";
import type { Message } from "../stream/accumulator.ts";
import type { Call, JsonCall, StreamCall } from "../proxy/messages_call.ts";
import { startCall } from "../proxy/messages_call.ts";
import type { ResumableStreams, StreamWriter } from "./resume.ts";
import { createStreamWriter } from "./resume.ts";

/** What `/chat` needs from the HTTP request. */
export interface ChatInput {
  /** The raw body, read as JSON whatever the content type. */
  bodyText: string;
  accept?: string | null;
  /** `?stats` asked for the plain-text stats line. */
  withStats: boolean;
  keyId: string;
  authStyle: "bearer" | "x-api-key";
  requestId: string;
  startedAt: number;
  anthropicVersion?: string;
  anthropicBeta?: string;
  /** Replay only: the fixture to serve (`x-sluice-fixture`). */
  fixture?: string;
  /** The request's signal: lets a client that leaves before its answer starts stop the call. */
  clientSignal?: AbortSignal;
  /** `x-sluice-on-disconnect`: this request's policy, over `SLUICE_ON_DISCONNECT`. */
  onDisconnect?: "finish" | "abort";
}

/**
 * Longest user message (UTF-16 units) a resumable stream's head keeps, for recording a cut answer
 * in its conversation: at most 40 KB as KV stores strings, under its 64 KiB value limit.
 */
const HEAD_MESSAGE_MAX = 20_000;

/** Response headers that keep proxies from buffering or rewriting a streamed answer. */
const STREAM_HEADERS = {
  "cache-control": "no-cache, no-transform",
  "x-accel-buffering": "no",
  // Without it, browsers may hold back the first KiB of text/plain to sniff its type.
  "x-content-type-options": "nosniff",
};

const CONTENT_TYPES: Record<ChatFormat, string> = {
  text: "text/plain; charset=utf-8",
  sse: "text/event-stream; charset=utf-8",
  json: "application/json",
};

/** Answers one `/chat` request. Errors before the answer starts are thrown as `SluiceError`. */
export async function handleChat(
  deps: RouteDeps,
  store: ConversationStore | undefined,
  input: ChatInput,
  streams?: ResumableStreams,
): Promise<Response> {
  const chat = parseChatBody(input.bodyText);
  const conversation = await loadConversation(deps, store, input.keyId, chat);
  const body = buildMessagesBody(chat, {
    model: deps.config.defaultModel,
    maxTokens: deps.config.chatMaxTokens,
    system: conversation?.system,
    conversationModel: conversation?.model,
  }, conversation?.turns);
  const format: ChatFormat = chat.stream === false ? "json" : chatFormat(input.accept);
  const conversationId = conversation?.id ?? null;

  // The exchange is stored only from here, once the answer is whole.
  const storeExchange = conversation && store
    ? exchangeStorer(store, conversation, input.keyId, chat.message!)
    : undefined;

  // A streamed SSE answer is resumable when there is a KV to buffer it in. The writer is made
  // here but writes nothing until the view's first event: a call that fails first costs none.
  const writer = streams && format === "sse"
    ? resumableWriter(deps, streams, input, {
      model: String(body.model),
      conversationId,
      message: chat.message!,
    })
    : undefined;

  const view = createChatView({
    format: format === "json" ? "text" : format,
    onDisconnect: input.onDisconnect ?? deps.config.onDisconnect,
    writer,
    withStats: input.withStats,
    prices: deps.config.prices,
    requestId: input.requestId,
    conversationId,
    redact: deps.upstream.redact.text,
    onComplete: storeExchange,
    onCompleteError: (error) => warnStoreFailed(deps, input.requestId, error),
  });
  const call = await startCall({
    upstream: deps.upstream,
    clock: deps.clock,
    logger: deps.logger,
    startedAt: input.startedAt,
    endpoint: "/chat",
    requestId: input.requestId,
    model: String(body.model),
    keyId: input.keyId,
    observer: format === "json" ? undefined : view.observer,
    request: {
      body: encodeJson(body),
      stream: body.stream === true,
      anthropicVersion: input.anthropicVersion,
      anthropicBeta: input.anthropicBeta,
      authStyle: input.authStyle,
      fixture: input.fixture,
    },
    clientSignal: input.clientSignal,
  });
  deps.record(call.finished);
  if (writer && call.kind !== "stream") writer.end(); // nothing was pushed: nothing is written

  const headers = new Headers(call.headers);
  if (conversationId) headers.set("x-sluice-conversation-id", conversationId);
  if (call.kind === "stream" && format === "json") {
    return await streamAsJson(deps, call, headers, input.requestId, conversationId, storeExchange);
  }
  if (call.kind === "stream") {
    return streamResponse(call, view, headers, format, input.keyId, writer, streams);
  }
  return wholeResponse(deps, call, headers, input.requestId, conversationId, storeExchange);
}

/** The conversation a request names, if it names one; 404 when it is not (or no longer) stored. */
async function loadConversation(
  deps: RouteDeps,
  store: ConversationStore | undefined,
  keyId: string,
  chat: ChatBody,
): Promise<Conversation | null> {
  if (chat.conversation_id === undefined) return null;
  if (!store) throw kvUnavailable("conversations", deps.kvFault);
  const conversation = await store.get(keyId, chat.conversation_id);
  if (!conversation) {
    throw new SluiceError(
      404,
      "not_found_error",
      `conversation ${JSON.stringify(chat.conversation_id)} not found (it may have expired)`,
    );
  }
  return conversation;
}

/** Stores a whole answer with the message it answers; resolves to whether it was stored. */
function exchangeStorer(
  store: ConversationStore,
  conversation: Conversation,
  keyId: string,
  userMessage: string,
): (message: Message) => Promise<boolean> {
  return async (message: Message) => {
    const answer = messageText(message);
    // An answer with no text (only tool calls, say) cannot be replayed as a plain turn.
    if (answer === "") return false;
    const exchange: [Turn, Turn] = [
      { role: "user", content: userMessage },
      { role: "assistant", content: answer },
    ];
    const result = await store.append(keyId, conversation.id, exchange);
    return result.status === "stored";
  };
}

/** The writer of a resumable answer; it leaves the instance's registries once it has ended. */
function resumableWriter(
  deps: RouteDeps,
  streams: ResumableStreams,
  input: ChatInput,
  answer: { model: string; conversationId: string | null; message: string },
): StreamWriter {
  const writer = createStreamWriter({
    kv: streams.kv,
    batcher: streams.batcher,
    owner: input.keyId,
    clock: deps.clock,
    logger: deps.logger,
    settings: deps.config.resume,
    meta: {
      endpoint: "/chat",
      requestId: input.requestId,
      startedAt: input.startedAt,
      model: answer.model,
      conversationId: answer.conversationId,
      // The head (rewritten at every commit) must stay under KV's 64 KiB value limit; a
      // message this long could not be stored in a conversation anyway.
      message: answer.conversationId && answer.message.length <= HEAD_MESSAGE_MAX
        ? answer.message
        : null,
    },
    onEnd: () => {
      streams.live.delete(writer.id);
      streams.stops.delete(writer.id);
    },
    track: (work) => deps.lifecycle?.track(work),
  });
  return writer;
}

/** A streamed answer through its view; a resumable one is registered to be resumed or stopped. */
function streamResponse(
  call: StreamCall,
  view: ChatView,
  headers: Headers,
  format: ChatFormat,
  keyId: string,
  writer: StreamWriter | undefined,
  streams: ResumableStreams | undefined,
): Response {
  for (const [key, value] of Object.entries(STREAM_HEADERS)) headers.set(key, value);
  headers.set("content-type", CONTENT_TYPES[format === "json" ? "text" : format]);
  if (writer) {
    streams!.live.add(writer);
    streams!.stops.set(writer.id, { owner: keyId, stop: view.stop });
    headers.set("x-sluice-stream-id", writer.id);
  }
  return new Response(view.body(call), { status: call.status, headers });
}

/** A whole body: an upstream error (passed on in Anthropic's shape), or a non-streamed answer. */
async function wholeResponse(
  deps: RouteDeps,
  call: JsonCall,
  headers: Headers,
  requestId: string,
  conversationId: string | null,
  storeExchange: ((message: Message) => Promise<boolean>) | undefined,
): Promise<Response> {
  headers.set("content-type", CONTENT_TYPES.json);
  const message = call.status < 300 ? parseMessage(call.body) : null;
  if (!message) return bufferedResponse(call.body, { status: call.status, headers });
  return await jsonAnswer(deps, call, message, headers, requestId, conversationId, storeExchange);
}

/**
 * The whole answer for a request that asked for one (`stream: false`) when the upstream streamed
 * it anyway (a proxy in between, an upstream that ignores the flag): the stream is read to its
 * end, and its message answered as a whole one is. A stream that ended without its message is
 * its error, in Anthropic's shape, with the status the API gives that error (or 502/504 when the
 * upstream broke off or went silent).
 */
async function streamAsJson(
  deps: RouteDeps,
  call: StreamCall,
  headers: Headers,
  requestId: string,
  conversationId: string | null,
  storeExchange: ((message: Message) => Promise<boolean>) | undefined,
): Promise<Response> {
  await call.stream.pipeTo(new WritableStream()); // the tap accumulates it as it passes
  await call.finished;
  headers.set("content-type", CONTENT_TYPES.json);
  const result = call.result();
  if (result?.complete && result.message && !result.error) {
    return await jsonAnswer(
      deps,
      call,
      result.message,
      headers,
      requestId,
      conversationId,
      storeExchange,
    );
  }
  const upstreamError = result?.error;
  const failure = upstreamError ?? call.failure() ??
    { type: "api_error", message: "the upstream's stream ended before its answer was whole" };
  const status = upstreamError
    ? statusForErrorType(failure.type)
    : failure.type === "timeout_error"
    ? 504
    : 502;
  return bufferedResponse(
    JSON.stringify(
      errorBody(failure.type, failure.message, call.headers.get("request-id") ?? requestId),
    ),
    { status, headers },
  );
}

/** A message as `/chat`'s JSON answer, stored with its question first when in a conversation. */
async function jsonAnswer(
  deps: RouteDeps,
  call: Call,
  message: Message,
  headers: Headers,
  requestId: string,
  conversationId: string | null,
  storeExchange: ((message: Message) => Promise<boolean>) | undefined,
): Promise<Response> {
  const done = await chatDone(call, requestId, conversationId, null, deps.config.prices);
  if (storeExchange) {
    try {
      done.stored = await storeExchange(message);
    } catch (error) {
      warnStoreFailed(deps, requestId, error);
      done.stored = false;
    }
  }
  return bufferedResponse(JSON.stringify(chatJsonAnswer(message, done)), {
    status: call.kind === "json" ? call.status : 200,
    headers,
  });
}

function warnStoreFailed(deps: RouteDeps, requestId: string, error: unknown): void {
  deps.logger.warn("storing a conversation turn failed", { id: requestId, error: String(error) });
}
