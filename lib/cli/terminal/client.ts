/**
 * A client for sluice's `/chat` and `/conversations`, used by the terminal client. It asks for
 * the SSE view (`Accept: text/event-stream`) and hands each piece of text to a callback as it
 * arrives.
 */
import type { ChatDone } from "../../chat/encoding.ts";
import { createSseDecoder } from "../../stream/sse.ts";

/** Where sluice is and how to reach it. */
export interface ChatClientOptions {
  /** sluice's base URL, e.g. `http://localhost:8000`. */
  url: string;
  /** A gateway key, sent as `Authorization: Bearer`. */
  key?: string;
  fetch?: typeof fetch;
}

/** An error sluice (or the upstream through it) answered, in Anthropic's shape. */
export class ChatApiError extends Error {
  readonly status: number;
  readonly type: string;

  constructor(status: number, type: string, message: string) {
    super(message);
    this.name = "ChatApiError";
    this.status = status;
    this.type = type;
  }
}

/** A `/chat` request body (docs/chat.md lists every field). */
export interface ChatRequest {
  message: string;
  conversation_id?: string;
  model?: string;
  system?: string;
  max_tokens?: number;
}

function endpoint(options: ChatClientOptions, path: string): string {
  return new URL(path, options.url.endsWith("/") ? options.url : `${options.url}/`).href;
}

function headers(options: ChatClientOptions, accept: string): Headers {
  const result = new Headers({ "content-type": "application/json", accept });
  if (options.key) result.set("authorization", `Bearer ${options.key}`);
  return result;
}

async function apiError(response: Response): Promise<ChatApiError> {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body?.error?.message) {
      return new ChatApiError(response.status, String(body.error.type), body.error.message);
    }
  } catch {
    // Not JSON (a proxy's page): report the status.
  }
  return new ChatApiError(response.status, "http_error", `HTTP ${response.status}`);
}

/**
 * Creates a conversation and returns its id, or null when the server keeps none (no KV: 503),
 * in which case the caller keeps the history itself.
 */
export async function createConversation(
  options: ChatClientOptions,
  init: { system?: string; model?: string } = {},
): Promise<string | null> {
  const response = await (options.fetch ?? fetch)(endpoint(options, "conversations"), {
    method: "POST",
    headers: headers(options, "application/json"),
    body: JSON.stringify(init),
  });
  if (response.status === 503) {
    await response.body?.cancel();
    return null;
  }
  if (!response.ok) throw await apiError(response);
  const body = await response.json();
  return String(body.id);
}

/** Callbacks of {@link streamChat}. */
export interface StreamChatHandlers {
  onText(text: string): void;
  signal?: AbortSignal;
}

/**
 * Sends one message and streams the answer. Resolves with the final `done` payload; rejects
 * with a {@link ChatApiError} for an error answer (before or during the stream), or with the
 * signal's reason when aborted.
 */
export async function streamChat(
  options: ChatClientOptions,
  request: ChatRequest | { messages: unknown[]; model?: string; system?: string },
  handlers: StreamChatHandlers,
): Promise<ChatDone> {
  const chatHeaders = headers(options, "text/event-stream");
  // Ctrl-C means stop: the answer is not finished and stored after the client lets go of it.
  chatHeaders.set("x-sluice-on-disconnect", "abort");
  const response = await (options.fetch ?? fetch)(endpoint(options, "chat"), {
    method: "POST",
    headers: chatHeaders,
    body: JSON.stringify(request),
    signal: handlers.signal,
  });
  if (!response.ok || !response.body) throw await apiError(response);
  let done: ChatDone | undefined;
  let failure: ChatApiError | undefined;
  const decoder = createSseDecoder((event) => {
    const data = JSON.parse(event.data);
    if (event.event === "text") handlers.onText(String(data.text));
    else if (event.event === "done") done = data;
    else if (event.event === "error") {
      failure = new ChatApiError(response.status, data.error.type, data.error.message);
    }
  });
  // Stop reading at once on abort: a real fetch's body would fail by itself, but a fetch that
  // is not a network call (an in-process app) only sees the body cancelled.
  const reader = response.body.getReader();
  const onAbort = () => reader.cancel(handlers.signal?.reason).catch(() => {});
  handlers.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for (;;) {
      const { value, done: ended } = await reader.read();
      handlers.signal?.throwIfAborted();
      if (ended) break;
      decoder.feed(value);
      if (failure) break;
    }
  } finally {
    handlers.signal?.removeEventListener("abort", onAbort);
    reader.releaseLock();
  }
  decoder.end();
  if (failure) {
    await response.body.cancel().catch(() => {});
    throw failure;
  }
  if (!done) {
    throw new ChatApiError(response.status, "incomplete", "the answer ended before it was done");
  }
  return done;
}
