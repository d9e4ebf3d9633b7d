/**
 * Replay for OpenAI-style clients: `POST /v1/chat/completions` answered from the same fixtures
 * as `/v1/messages`, translated from Anthropic's events into what the API's OpenAI-compatible
 * endpoint sends: `chat.completion.chunk` events (`data: {…}` … `data: [DONE]`) when streamed,
 * one `chat.completion` otherwise. replay.ts's fetch hands this path here.
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
import { EventAccumulator } from "./accumulator.ts";
import { openaiErrorBody, openaiSseError } from "./errors.ts";
import type { Fixture, FixtureSet, Pace, ScheduledChunk } from "./replay.ts";
import { pickFixture, schedule } from "./replay.ts";
import { createSseDecoder, type SseEvent } from "./sse.ts";

/** Options for {@link chatCompletionsReplay}. */
export interface ChatCompletionsReplayOptions {
  pace: Pace;
  /** Waits `ms` or until `signal` aborts (replay.ts's, injectable for tests). */
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** The `request-id` of the answer. */
  requestId: string;
}

/** Answers one `POST /v1/chat/completions` from `set`. */
export async function chatCompletionsReplay(
  set: FixtureSet,
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
  const requested = request.headers.get("x-sluice-fixture");
  const fixture = pickFixture(set, fixtureRequestOf(body), requested);
  const headers: Record<string, string> = { "request-id": options.requestId };
  if (!fixture) {
    const names = [...set.fixtures.keys()].sort().join(", ");
    return json(
      404,
      openaiErrorBody("not_found_error", `no fixture named "${requested}"; have: ${names}`),
      headers,
    );
  }
  if (fixture.http) {
    return json(fixture.http.status, openaiErrorOf(fixture.http.body), {
      ...fixture.http.headers,
      "request-id": fixture.http.headers["request-id"] ?? options.requestId,
    });
  }
  headers["x-sluice-fixture"] = fixture.name;
  const translation = {
    model: typeof body.model === "string" ? body.model : null,
    includeUsage: includeUsage(body),
    created: Math.floor(Date.now() / 1000),
  };
  const chunks = schedule(fixture, options.pace);
  const signal = request.signal;
  if (body.stream === true) {
    const stream = translatedStream(chunks, createChunkTranslator(translation), options, signal);
    return new Response(stream, {
      headers: { ...headers, "content-type": "text/event-stream; charset=utf-8" },
    });
  }
  // As on /v1/messages: a whole answer waits as long as the stream would have taken.
  await options.sleep(chunks.at(-1)?.atMs ?? 0, signal);
  return wholeAnswer(fixture, translation, headers);
}

/**
 * The fields of a Messages request that fixture selection reads, from an OpenAI request:
 * `messages` (OpenAI's text parts have the Messages API's `{type: "text", text}` form already),
 * `system` (system and developer messages joined with a newline, as the compatible endpoint
 * hoists them), `tools` (or the older `functions`), `thinking` (which the compatible endpoint
 * also takes) and `max_tokens` (or `max_completion_tokens`).
 */
export function fixtureRequestOf(body: Record<string, unknown>): Record<string, unknown> {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  const system = messages
    .filter((m) => m && (m.role === "system" || m.role === "developer"))
    .map((m) => textOf(m.content))
    .join("\n");
  return {
    model: body.model,
    messages,
    ...(system ? { system } : {}),
    tools: body.tools ?? body.functions,
    thinking: body.thinking,
    max_tokens: body.max_completion_tokens ?? body.max_tokens,
    stream: body.stream,
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

/** Creates a translator for one stream (see the module comment for the mapping). */
export function createChunkTranslator(translation: Translation): ChunkTranslator {
  let id = "chatcmpl-replay";
  let model = translation.model ?? "";
  let promptTokens = 0;
  let completionTokens = 0;
  let ended = false;
  /** Anthropic content block index → OpenAI tool call index. */
  const toolCalls = new Map<number, number>();
  const chunk = (delta: Record<string, unknown>, finish: string | null = null) =>
    data({
      id,
      object: "chat.completion.chunk",
      created: translation.created,
      model,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
      // OpenAI sends `usage: null` on every chunk but the last when usage was asked for.
      ...(translation.includeUsage ? { usage: null } : {}),
    });
  return {
    get ended() {
      return ended;
    },
    push(event) {
      if (ended) return [];
      let e: Record<string, unknown>;
      try {
        e = JSON.parse(event.data);
      } catch {
        return [];
      }
      switch (e?.type) {
        case "message_start": {
          const message = (e.message ?? {}) as Record<string, unknown>;
          if (typeof message.id === "string") id = `chatcmpl-${message.id}`;
          if (!translation.model && typeof message.model === "string") model = message.model;
          ({ promptTokens, completionTokens } = countUsage(message.usage, {
            promptTokens,
            completionTokens,
          }));
          return [chunk({ role: "assistant", content: "" })];
        }
        case "content_block_start": {
          const block = (e.content_block ?? {}) as Record<string, unknown>;
          if (block.type === "text" && typeof block.text === "string" && block.text) {
            return [chunk({ content: block.text })];
          }
          if (block.type !== "tool_use" || typeof e.index !== "number") return [];
          const index = toolCalls.size;
          toolCalls.set(e.index, index);
          return [chunk({
            tool_calls: [{
              index,
              id: block.id,
              type: "function",
              function: { name: block.name, arguments: "" },
            }],
          })];
        }
        case "content_block_delta": {
          const delta = (e.delta ?? {}) as Record<string, unknown>;
          if (delta.type === "text_delta" && typeof delta.text === "string") {
            return delta.text ? [chunk({ content: delta.text })] : [];
          }
          const index = typeof e.index === "number" ? toolCalls.get(e.index) : undefined;
          if (delta.type !== "input_json_delta" || index === undefined) return [];
          const partial = typeof delta.partial_json === "string" ? delta.partial_json : "";
          return partial
            ? [chunk({ tool_calls: [{ index, function: { arguments: partial } }] })]
            : [];
        }
        case "message_delta": {
          ({ promptTokens, completionTokens } = countUsage(e.usage, {
            promptTokens,
            completionTokens,
          }));
          const reason = finishReason((e.delta as { stop_reason?: unknown })?.stop_reason);
          return reason ? [chunk({}, reason)] : [];
        }
        case "message_stop": {
          ended = true;
          const out: string[] = [];
          if (translation.includeUsage) {
            out.push(data({
              id,
              object: "chat.completion.chunk",
              created: translation.created,
              model,
              choices: [],
              usage: usageOf(promptTokens, completionTokens),
            }));
          }
          out.push("data: [DONE]\n\n");
          return out;
        }
        case "error": {
          ended = true;
          const error = (e.error ?? {}) as { type?: unknown; message?: unknown };
          return [openaiSseError(
            typeof error.type === "string" ? error.type : "api_error",
            typeof error.message === "string" ? error.message : "error",
          )];
        }
        default: // ping, block stops, thinking/citation deltas and unknown events
          return [];
      }
    },
  };
}

/** The translated, paced stream: each fixture chunk at its time, as the chunks it becomes. */
function translatedStream(
  chunks: ScheduledChunk[],
  translator: ChunkTranslator,
  options: ChatCompletionsReplayOptions,
  signal: AbortSignal,
): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  let pending: string[] = [];
  const decoder = createSseDecoder((event) => pending.push(...translator.push(event)));
  let i = 0;
  let elapsed = 0;
  const cancelled = new AbortController();
  const onAbort = () => cancelled.abort(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      // Until something is sent: a fixture chunk may translate to nothing (a ping).
      while (pending.length === 0) {
        if (i >= chunks.length || translator.ended) {
          signal.removeEventListener("abort", onAbort);
          decoder.end();
          controller.close();
          return;
        }
        const next = chunks[i++];
        const wait = next.atMs - elapsed;
        try {
          if (wait > 0) await options.sleep(wait, cancelled.signal);
        } catch (error) {
          controller.error(error);
          return;
        }
        elapsed = Math.max(elapsed, next.atMs);
        decoder.feed(next.bytes);
      }
      const text = pending.join("");
      pending = [];
      controller.enqueue(encoder.encode(text));
    },
    cancel() {
      signal.removeEventListener("abort", onAbort);
      cancelled.abort();
    },
  }, { highWaterMark: 0 });
}

/** The whole `chat.completion` for a fixture, or the error it ends with. */
function wholeAnswer(
  fixture: Fixture,
  translation: Translation,
  headers: Record<string, string>,
): Response {
  let message: Record<string, unknown>;
  if (fixture.json) message = JSON.parse(fixture.json);
  else {
    const accumulator = new EventAccumulator();
    const decoder = createSseDecoder((event) => accumulator.push(event));
    decoder.feed(fixture.sse ?? new Uint8Array());
    decoder.end();
    const result = accumulator.end();
    if (result.error) {
      const status = result.error.type === "overloaded_error" ? 529 : 500;
      return json(status, openaiErrorBody(result.error.type, result.error.message), headers);
    }
    if (!result.complete || !result.message) {
      return json(
        500,
        openaiErrorBody("api_error", `fixture "${fixture.name}" is a stream that ends early`),
        headers,
      );
    }
    message = result.message as unknown as Record<string, unknown>;
  }
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
  return json(200, {
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
  }, headers);
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
