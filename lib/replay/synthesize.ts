/** Answers replay writes itself: the final text answer to a turn of tool results, as a stream. */
import type { Json } from "./body.ts";
import { isObject, lastUserMessage } from "./body.ts";

const encoder = new TextEncoder();
const sse = (event: string, data: unknown) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;

/**
 * The final answer to a turn of tool results: it names each tool and quotes what it returned
 * (shortened), so a client sees its result was read and an agent loop ends with text.
 */
export function toolResultAnswer(body: Record<string, unknown>): string {
  const names = new Map<string, string>();
  for (const message of Array.isArray(body.messages) ? body.messages : []) {
    if (!isObject(message) || !Array.isArray(message.content)) continue;
    for (const block of message.content) {
      if (isObject(block) && block.type === "tool_use" && typeof block.id === "string") {
        names.set(block.id, typeof block.name === "string" ? block.name : "tool");
      }
    }
  }
  const content = lastUserMessage(body)?.content;
  const results = (Array.isArray(content) ? content : []).filter((block): block is Json =>
    isObject(block) && block.type === "tool_result"
  );
  const lines = results.map((result) => {
    // A threaded request (the SDK's tool runner) sends only the new turn: the call's name may
    // be unknown here.
    const name = names.get(String(result.tool_use_id));
    const tool = name ? `The ${name} tool` : "The tool";
    const quoted = shorten(resultText(result.content), 300) || "(nothing)";
    return result.is_error === true
      ? `${tool} reported an error: ${quoted}`
      : `${tool} returned: ${quoted}`;
  });
  return `${lines.join("\n")}\n\nThat is all I needed. (sluice replay: this final answer ` +
    `quotes your tool results; set ANTHROPIC_API_KEY for real answers.)`;
}

function resultText(content: unknown): string {
  if (typeof content === "string") return content.trim();
  if (!Array.isArray(content)) return "";
  return content.map((block) => {
    if (!isObject(block)) return "";
    if (typeof block.text === "string") return block.text.trim();
    return `[${typeof block.type === "string" ? block.type : "content"}]`;
  }).filter((part) => part !== "").join(" ");
}

/** At most `max` characters (whole code points), with an ellipsis when shortened. */
function shorten(text: string, max: number): string {
  const chars = [...text];
  return chars.length <= max ? text : chars.slice(0, max).join("") + "…";
}

/**
 * A whole text answer as the API streams it: `message_start`, one text block in deltas of a
 * few words, `message_delta` with `end_turn`, `message_stop`. Output tokens are estimated as
 * characters / 4, like the pace.
 */
export function synthesizeStream(
  options: { id: string; model: string; text: string; inputTokens: number },
): Uint8Array {
  const parts = [
    sse("message_start", {
      type: "message_start",
      message: {
        id: options.id,
        type: "message",
        role: "assistant",
        model: options.model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: {
          input_tokens: options.inputTokens,
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
          output_tokens: 1,
        },
      },
    }),
    sse("content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "text", text: "" },
    }),
    sse("ping", { type: "ping" }),
  ];
  for (const piece of options.text.match(/\s*(\S+\s*){1,3}/g) ?? []) {
    parts.push(sse("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "text_delta", text: piece },
    }));
  }
  parts.push(
    sse("content_block_stop", { type: "content_block_stop", index: 0 }),
    sse("message_delta", {
      type: "message_delta",
      delta: { stop_reason: "end_turn", stop_sequence: null },
      usage: { output_tokens: Math.max(1, Math.ceil(options.text.length / 4)) },
    }),
    sse("message_stop", { type: "message_stop" }),
  );
  return encoder.encode(parts.join(""));
}
