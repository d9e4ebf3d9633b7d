/**
 * Replay for OpenAI-style clients: `POST /v1/chat/completions` answered from the same fixtures
 * as `/v1/messages`, translated from Anthropic's events into what the API's OpenAI-compatible
 * endpoint sends: `chat.completion.chunk` events (`data: {…}` … `data: [DONE]`) when streamed,
 * one `chat.completion` otherwise. replay.ts's fetch hands this path here, with a replay fetch
 * for `/v1/messages` whose answer is translated: the fixtures are chosen, cut and paced as for
 * `/v1/messages` itself.
 *
 * The translation (hand-written: no library translates Anthropic streams into OpenAI's):
 * - `message_start` → a first chunk with `delta: {role: "assistant", content: ""}` and the id;
 * - text deltas → `delta.content`;
 * - a `tool_use` block → `delta.tool_calls[{index, id, type: "function", function: {name,
 *   arguments: ""}}]`, then its input JSON deltas → `function.arguments`, streamed as they come;
 * - `message_delta`'s `stop_reason` → a chunk with `finish_reason` (see {@link finishReason});
 * - `message_stop` → a usage chunk (`choices: []`) when the request set
 *   `stream_options.include_usage`, then `data: [DONE]`;
 * - an `error` event → a `data: {"error": …}` chunk, and the stream ends (no `[DONE]`).
 * Thinking, citations and server tool blocks are left out, as the compatible endpoint does not
 * return them. The model is the one requested (the fixture's when the request names none).
 */
import { openaiErrorBody, openaiSseError } from "../errors.ts";
import { createSseDecoder, type SseEvent } from "../stream/sse.ts";

/** Options for {@link chatCompletionsReplay}. */
export interface ChatCompletionsReplayOptions {
  /** Replay's own `fetch` for `POST /v1/messages`: the answer this one translates. */
  messages: typeof fetch;
  /** The `request-id` of the answer. */
  requestId: string;
}

/**
 * Answers one `POST /v1/chat/completions`: the request becomes a Messages request (see
 * {@link messagesRequestOf}), replay answers that as it answers `/v1/messages` (fixture
 * selection, tool-result answers, `max_tokens`, pacing, recorded errors), and the answer is
 * translated as it streams.
 */
export async function chatCompletionsReplay(
  request: Request,
  options: ChatCompletionsReplayOptions,
): Promise<Response> {
  let body: Record<string, unknown>;
  try {
    const value = await request.json();
    if (!value || typeof value !== "object" || Array.isArray(value)) {
      throw new Error("not an object");
    }
    body = value;
  } catch {
    return json(400, openaiErrorBody("invalid_request_error", "request body is not a JSON object"));
  }
  const forwarded = new Headers({ "content-type": "application/json" });
  const fixture = request.headers.get("x-sluice-fixture");
  if (fixture) forwarded.set("x-sluice-fixture", fixture);
  const answer = await options.messages(
    new Request(new URL("/v1/messages", request.url), {
      method: "POST",
      headers: forwarded,
      body: JSON.stringify(messagesRequestOf(body)),
      signal: request.signal,
    }),
  );
  const headers: Record<string, string> = {};
  answer.headers.forEach((value, key) => {
    if (!/^(content-type|content-length)$/i.test(key)) headers[key] = value;
  });
  headers["request-id"] = options.requestId;
  const translation = {
    model: typeof body.model === "string" && body.model !== "" ? body.model : null,
    includeUsage: includeUsage(body),
    created: Math.floor(Date.now() / 1000),
  };
  const type = answer.headers.get("content-type") ?? "";
  if (answer.ok && type.includes("text/event-stream") && answer.body) {
    return new Response(translatedStream(answer.body, createChunkTranslator(translation)), {
      status: answer.status,
      headers: { ...headers, "content-type": "text/event-stream; charset=utf-8" },
    });
  }
  let parsed: unknown = null;
  try {
    parsed = await answer.json();
  } catch {
    // An answer replay could not make: said as an error below.
  }
  if (!answer.ok) return json(answer.status, openaiErrorOf(parsed), headers);
  if (!parsed || typeof parsed !== "object") {
    return json(500, openaiErrorBody("api_error", "replay's answer is not a message"), headers);
  }
  return json(200, chatCompletionOf(parsed as Record<string, unknown>, translation), headers);
}

/**
 * An OpenAI request as the Messages request the compatible endpoint makes of it, as far as
 * replay reads one: `system` (system and developer messages joined with a newline, as that
 * endpoint hoists them); `messages` (text parts as text blocks, an assistant's `tool_calls` as
 * `tool_use` blocks, `tool` messages as a user turn of `tool_result` blocks); `tools` (each
 * function's name, description and parameters, or the older `functions`); `max_tokens` (or
 * `max_completion_tokens`); `thinking`, which that endpoint also takes; `model` and `stream`.
 */
export function messagesRequestOf(body: Record<string, unknown>): Record<string, unknown> {
  const input = Array.isArray(body.messages) ? body.messages : [];
  const system: string[] = [];
  const messages: { role: string; content: unknown[] }[] = [];
  const push = (role: string, blocks: unknown[]) => {
    const last = messages.at(-1);
    if (last && last.role === role) last.content.push(...blocks);
    else messages.push({ role, content: blocks });
  };
  for (const message of input) {
    if (!message || typeof message !== "object") continue;
    const m = message as Record<string, unknown>;
    if (m.role === "system" || m.role === "developer") system.push(textOf(m.content));
    else if (m.role === "user") push("user", textBlocks(m.content));
    else if (m.role === "tool") {
      push("user", [{
        type: "tool_result",
        tool_use_id: m.tool_call_id,
        content: textOf(m.content),
      }]);
    } else if (m.role === "assistant") {
      const calls = Array.isArray(m.tool_calls) ? m.tool_calls : [];
      push("assistant", [
        ...textBlocks(m.content),
        ...calls.map((
          call: { id?: unknown; function?: { name?: unknown; arguments?: unknown } },
        ) => ({
          type: "tool_use",
          id: call?.id,
          name: call?.function?.name,
          input: parseArguments(call?.function?.arguments),
        })),
      ]);
    }
  }
  const functions = Array.isArray(body.tools)
    ? body.tools.map((tool: { function?: unknown }) => tool?.function)
    : Array.isArray(body.functions)
    ? body.functions
    : [];
  const tools = functions
    .filter((f): f is Record<string, unknown> => !!f && typeof f === "object")
    .map((f) => ({ name: f.name, description: f.description, input_schema: f.parameters ?? {} }));
  const maxTokens = body.max_completion_tokens ?? body.max_tokens;
  return {
    model: body.model,
    ...(typeof maxTokens === "number" ? { max_tokens: maxTokens } : {}),
    ...(system.length ? { system: system.join("\n") } : {}),
    messages,
    ...(tools.length ? { tools } : {}),
    ...(body.thinking !== undefined ? { thinking: body.thinking } : {}),
    ...(typeof body.stream === "boolean" ? { stream: body.stream } : {}),
  };
}

/** OpenAI's `finish_reason` for an Anthropic `stop_reason`. */
export function finishReason(stopReason: unknown): string | null {
  switch (stopReason) {
    case null:
    case undefined:
      return null;
    case "max_tokens":
    case "model_context_window_exceeded":
      return "length";
    case "tool_use":
      return "tool_calls";
    case "refusal":
      return "content_filter";
    default: // end_turn, stop_sequence, pause_turn and any newer reason
      return "stop";
  }
}

/** What the translation needs to know about the request. */
interface Translation {
  /** The requested model; null: the fixture's. */
  model: string | null;
  includeUsage: boolean;
  /** `created`, in seconds since the epoch. */
  created: number;
}

/** Turns Anthropic events, one at a time, into OpenAI SSE events (as text). */
interface ChunkTranslator {
  push(event: SseEvent): string[];
  /** Whether the stream is over (`[DONE]` or an error was sent). */
  readonly ended: boolean;
}

/** The translator's state over one stream. */
interface TranslatorState {
  /** What the request asked for (model, usage, `created`). */
  readonly translation: Translation;
  id: string;
  model: string;
  tokens: { promptTokens: number; completionTokens: number };
  ended: boolean;
  /** Anthropic content block index → OpenAI tool call index. */
  toolCalls: Map<number, number>;
}

/** Creates a translator for one stream (see the module comment for the mapping). */
export function createChunkTranslator(translation: Translation): ChunkTranslator {
  const state: TranslatorState = {
    translation,
    id: "chatcmpl-replay",
    model: translation.model ?? "",
    tokens: { promptTokens: 0, completionTokens: 0 },
    ended: false,
    toolCalls: new Map(),
  };
  return {
    get ended() {
      return state.ended;
    },
    push(event) {
      if (state.ended) return [];
      let e: Record<string, unknown>;
      try {
        e = JSON.parse(event.data);
      } catch {
        return [];
      }
      return translateEvent(e, state);
    },
  };
}

/** One Anthropic event as the OpenAI SSE events it becomes (none for most). */
function translateEvent(e: Record<string, unknown>, state: TranslatorState): string[] {
  switch (e?.type) {
    case "message_start":
      return messageStart(e, state);
    case "content_block_start":
      return contentBlockStart(e, state);
    case "content_block_delta":
      return contentBlockDelta(e, state);
    case "message_delta": {
      state.tokens = countUsage(e.usage, state.tokens);
      const reason = finishReason((e.delta as { stop_reason?: unknown })?.stop_reason);
      return reason ? [chunkOf(state, {}, reason)] : [];
    }
    case "message_stop":
      return messageStop(state);
    case "error": {
      state.ended = true;
      const error = (e.error ?? {}) as { type?: unknown; message?: unknown };
      return [openaiSseError(
        typeof error.type === "string" ? error.type : "api_error",
        typeof error.message === "string" ? error.message : "error",
      )];
    }
    default: // ping, block stops, thinking/citation deltas and unknown events
      return [];
  }
}

/** `message_start`: the first chunk, with the id (and the model when the request named none). */
function messageStart(e: Record<string, unknown>, state: TranslatorState): string[] {
  const message = (e.message ?? {}) as Record<string, unknown>;
  if (typeof message.id === "string") state.id = `chatcmpl-${message.id}`;
  if (!state.translation.model && typeof message.model === "string") state.model = message.model;
  state.tokens = countUsage(message.usage, state.tokens);
  return [chunkOf(state, { role: "assistant", content: "" })];
}

/** `content_block_start`: a text block's first text, or a tool call's name and id. */
function contentBlockStart(e: Record<string, unknown>, state: TranslatorState): string[] {
  const block = (e.content_block ?? {}) as Record<string, unknown>;
  if (block.type === "text" && typeof block.text === "string" && block.text) {
    return [chunkOf(state, { content: block.text })];
  }
  if (block.type !== "tool_use" || typeof e.index !== "number") return [];
  const index = state.toolCalls.size;
  state.toolCalls.set(e.index, index);
  return [chunkOf(state, {
    tool_calls: [{
      index,
      id: block.id,
      type: "function",
      function: { name: block.name, arguments: "" },
    }],
  })];
}

/** `content_block_delta`: text as `content`, a tool call's input JSON as its `arguments`. */
function contentBlockDelta(e: Record<string, unknown>, state: TranslatorState): string[] {
  const delta = (e.delta ?? {}) as Record<string, unknown>;
  if (delta.type === "text_delta" && typeof delta.text === "string") {
    return delta.text ? [chunkOf(state, { content: delta.text })] : [];
  }
  const index = typeof e.index === "number" ? state.toolCalls.get(e.index) : undefined;
  if (delta.type !== "input_json_delta" || index === undefined) return [];
  const partial = typeof delta.partial_json === "string" ? delta.partial_json : "";
  return partial
    ? [chunkOf(state, { tool_calls: [{ index, function: { arguments: partial } }] })]
    : [];
}

/** `message_stop`: the usage chunk when asked for, then `[DONE]`; the stream is over. */
function messageStop(state: TranslatorState): string[] {
  state.ended = true;
  const out: string[] = [];
  if (state.translation.includeUsage) {
    const usage = usageOf(state.tokens.promptTokens, state.tokens.completionTokens);
    out.push(data({ ...chunkHead(state), choices: [], usage }));
  }
  out.push("data: [DONE]\n\n");
  return out;
}

/** One `chat.completion.chunk` with `delta` (and `finish_reason`). */
function chunkOf(
  state: TranslatorState,
  delta: Record<string, unknown>,
  finish: string | null = null,
): string {
  return data({
    ...chunkHead(state),
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    // OpenAI sends `usage: null` on every chunk but the last when usage was asked for.
    ...(state.translation.includeUsage ? { usage: null } : {}),
  });
}

/** The fields every `chat.completion.chunk` of the stream starts with. */
function chunkHead(state: TranslatorState) {
  return {
    id: state.id,
    object: "chat.completion.chunk",
    created: state.translation.created,
    model: state.model,
  };
}

/** The translated stream: each chunk of replay's Messages stream as the chunks it becomes. */
function translatedStream(
  source: ReadableStream<Uint8Array>,
  translator: ChunkTranslator,
): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  let pending: string[] = [];
  const decoder = createSseDecoder((event) => pending.push(...translator.push(event)));
  const reader = source.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      // Until something is sent: a chunk may translate to nothing (a ping). Replay's pacing is
      // kept, as each chunk is read when it comes.
      while (pending.length === 0) {
        if (translator.ended) {
          reader.cancel().catch(() => {});
          controller.close();
          return;
        }
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await reader.read();
        } catch (error) {
          controller.error(error); // a fixture that ends like a dropped connection
          return;
        }
        if (result.done) {
          decoder.end();
          if (pending.length === 0) {
            controller.close();
            return;
          }
          break;
        }
        decoder.feed(result.value);
      }
      const text = pending.join("");
      pending = [];
      controller.enqueue(encoder.encode(text));
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** The `chat.completion` for a whole Messages answer. */
function chatCompletionOf(message: Record<string, unknown>, translation: Translation) {
  const blocks = (Array.isArray(message.content) ? message.content : []) as Record<
    string,
    unknown
  >[];
  const text = blocks.filter((b) => b.type === "text").map((b) => String(b.text ?? "")).join("");
  const toolCalls = blocks.filter((b) => b.type === "tool_use").map((b) => ({
    id: b.id,
    type: "function",
    function: { name: b.name, arguments: JSON.stringify(b.input ?? {}) },
  }));
  const { promptTokens, completionTokens } = countUsage(message.usage, {
    promptTokens: 0,
    completionTokens: 0,
  });
  return {
    id: `chatcmpl-${message.id ?? "replay"}`,
    object: "chat.completion",
    created: translation.created,
    model: translation.model ?? message.model,
    choices: [{
      index: 0,
      message: {
        role: "assistant",
        content: text || (toolCalls.length ? null : ""),
        refusal: null,
        ...(toolCalls.length ? { tool_calls: toolCalls } : {}),
      },
      logprobs: null,
      finish_reason: finishReason(message.stop_reason) ?? "stop",
    }],
    usage: usageOf(promptTokens, completionTokens),
  };
}

/**
 * Token counts from an Anthropic `usage` (the API's cumulative rule: a later value replaces an
 * earlier one). OpenAI's `prompt_tokens` includes cached tokens, so cache reads and writes are
 * added to the input.
 */
function countUsage(
  usage: unknown,
  sofar: { promptTokens: number; completionTokens: number },
): { promptTokens: number; completionTokens: number } {
  if (!usage || typeof usage !== "object") return sofar;
  const u = usage as Record<string, unknown>;
  const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
  const hasInput = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
    .some((k) => typeof u[k] === "number");
  return {
    promptTokens: hasInput
      ? n(u.input_tokens) + n(u.cache_creation_input_tokens) + n(u.cache_read_input_tokens)
      : sofar.promptTokens,
    completionTokens: typeof u.output_tokens === "number"
      ? u.output_tokens
      : sofar.completionTokens,
  };
}

function usageOf(promptTokens: number, completionTokens: number) {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
  };
}

/** An Anthropic error body in OpenAI's shape; any other body as it is. */
function openaiErrorOf(body: unknown): unknown {
  const b = body as { type?: unknown; error?: { type?: unknown; message?: unknown } } | null;
  if (b?.type !== "error" || !b.error || typeof b.error !== "object") return body;
  return openaiErrorBody(String(b.error.type ?? "api_error"), String(b.error.message ?? ""));
}

function includeUsage(body: Record<string, unknown>): boolean {
  const options = body.stream_options as { include_usage?: unknown } | null | undefined;
  return options?.include_usage === true;
}

/** An OpenAI message's content as Messages text blocks (other parts are not replayed). */
function textBlocks(content: unknown): unknown[] {
  const text = textOf(content);
  return text ? [{ type: "text", text }] : [];
}

/** A tool call's `arguments` (a JSON string) as the `tool_use` input; `{}` when not JSON. */
function parseArguments(value: unknown): unknown {
  try {
    const parsed = JSON.parse(String(value ?? "{}"));
    return parsed && typeof parsed === "object" ? parsed : {};
  } catch {
    return {};
  }
}

/** The text of an OpenAI message's content: a string, or its text parts joined. */
function textOf(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .map((part) => (part?.type === "text" && typeof part.text === "string" ? part.text : ""))
    .join("");
}

function data(value: unknown): string {
  return `data: ${JSON.stringify(value)}\n\n`;
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...headers, "content-type": "application/json" },
  });
}
