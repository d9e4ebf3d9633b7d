/**
 * Reads an OpenAI-style `chat.completion.chunk` stream (the Anthropic API's OpenAI-compatible
 * endpoint, or replay's translation of a fixture) for stats: when the first content arrived,
 * the model, the finish reason, the usage chunk, the `[DONE]` sentinel and in-band errors. It
 * only watches: the bytes reach the client unchanged before it sees them (see sse.ts
 * `tapStream`).
 *
 * Hand-written: there is no kept library for accumulating chunks outside the OpenAI SDK's own
 * client, and sluice needs only these few fields, not the assembled message.
 */
import type { Clock } from "../clock.ts";
import type { TokenUsage } from "../stats/request_summary.ts";
import type { SseEvent } from "../stream/sse.ts";

/** What the tap learned from a stream so far. */
export interface ChatCompletionsResult {
  /** The `model` of the chunks (the first one that names it). */
  model: string | null;
  /** `choices[0].finish_reason` (`stop`, `length`, `tool_calls`, …) once a chunk gave one. */
  finishReason: string | null;
  /**
   * From the usage chunk, which the upstream sends only when the request asked for it
   * (`stream_options.include_usage`); zeros otherwise. `prompt_tokens` is counted as input and
   * `completion_tokens` as output; cached tokens are not told apart.
   */
  usage: TokenUsage;
  /** Whether any chunk carried a `usage` object. */
  sawUsage: boolean;
  /** Whether `data: [DONE]` arrived: the stream ended as it should. */
  done: boolean;
  /** An in-band error (`data: {"error": …}`), which ends the answer. */
  error: { type: string; message: string } | null;
  /**
   * On the tap's clock, when the first chunk with content arrived: non-empty
   * `choices[0].delta.content`, or a `tool_calls` delta (so a tool-only answer has a TTFT, as
   * on `/v1/messages`, where any content block delta counts). Null when none did.
   */
  firstDeltaAt: number | null;
  /** Chunks seen, by kind: their `object` (`chat.completion.chunk`), `done` and `error`. */
  events: Record<string, number>;
}

/** Options for {@link createChatCompletionsTap}. */
export interface ChatCompletionsTapOptions {
  clock: Clock;
}

/** Watches decoded SSE events of a chat completions stream. */
export interface ChatCompletionsTap {
  push(event: SseEvent): void;
  result(): ChatCompletionsResult;
}

/** Creates a tap; feed it every decoded SSE event, in order. */
export function createChatCompletionsTap(options: ChatCompletionsTapOptions): ChatCompletionsTap {
  const state: ChatCompletionsResult = {
    model: null,
    finishReason: null,
    usage: {
      input_tokens: 0,
      output_tokens: 0,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
    },
    sawUsage: false,
    done: false,
    error: null,
    firstDeltaAt: null,
    events: {},
  };
  const count = (name: string) => (state.events[name] = (state.events[name] ?? 0) + 1);
  return {
    push(event) {
      const data = event.data.trim();
      if (data === "[DONE]") {
        count("done");
        state.done = true;
        return;
      }
      let chunk: Record<string, unknown>;
      try {
        const parsed = JSON.parse(data);
        if (!parsed || typeof parsed !== "object") return void count("unknown");
        chunk = parsed;
      } catch {
        return void count("unknown");
      }
      if (event.event === "error" || (chunk.error && typeof chunk.error === "object")) {
        count("error");
        const error = (chunk.error ?? chunk) as { type?: unknown; message?: unknown };
        state.error = {
          type: typeof error.type === "string" ? error.type : "api_error",
          message: typeof error.message === "string" ? error.message : "",
        };
        return;
      }
      count(typeof chunk.object === "string" ? chunk.object : "unknown");
      if (state.model === null && typeof chunk.model === "string") state.model = chunk.model;
      const choice = Array.isArray(chunk.choices)
        ? chunk.choices[0] as Record<string, unknown> | undefined
        : undefined;
      if (choice && typeof choice === "object") {
        const delta = choice.delta as { content?: unknown; tool_calls?: unknown } | undefined;
        const hasContent = typeof delta?.content === "string" && delta.content.length > 0;
        const hasToolCall = Array.isArray(delta?.tool_calls) && delta.tool_calls.length > 0;
        if (state.firstDeltaAt === null && (hasContent || hasToolCall)) {
          state.firstDeltaAt = options.clock.now();
        }
        if (typeof choice.finish_reason === "string") state.finishReason = choice.finish_reason;
      }
      const usage = chunk.usage as Record<string, unknown> | null | undefined;
      if (usage && typeof usage === "object") {
        state.sawUsage = true;
        state.usage = {
          ...state.usage,
          input_tokens: tokens(usage.prompt_tokens),
          output_tokens: tokens(usage.completion_tokens),
        };
      }
    },
    result: () => ({ ...state, usage: { ...state.usage }, events: { ...state.events } }),
  };
}

/** Usage counters of a whole `chat.completion` body (zeros where absent). */
export function chatCompletionUsage(usage: unknown): TokenUsage {
  const u = (usage && typeof usage === "object" ? usage : {}) as Record<string, unknown>;
  return {
    input_tokens: tokens(u.prompt_tokens),
    output_tokens: tokens(u.completion_tokens),
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: 0,
  };
}

function tokens(value: unknown): number {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : 0;
}
