/**
 * `/chat`'s request: the small body people type (`{"message":"hi"}`), validated, and the
 * Messages API body built from it.
 *
 * The body is read as JSON whatever its content type, because `curl -d '{...}'` sends
 * `application/x-www-form-urlencoded` and `/chat` is meant to be a curl one-liner.
 */
import { z } from "zod";
import type { Turn } from "./conversations.ts";
import { SluiceError } from "../errors.ts";
import { describeIssues } from "../http/validate.ts";

const textBlock = z.looseObject({ type: z.literal("text"), text: z.string() });

/** The `/chat` body. Unknown fields are refused, so a typo is not silently ignored. */
export const chatBodySchema = z.strictObject({
  message: z.string().min(1, "must not be empty").optional(),
  messages: z.array(
    z.looseObject({
      role: z.enum(["user", "assistant"]),
      content: z.union([z.string().min(1), z.array(z.looseObject({ type: z.string() })).min(1)]),
    }),
  ).min(1).optional(),
  system: z.union([z.string(), z.array(textBlock)]).optional(),
  model: z.string().min(1).optional(),
  max_tokens: z.number().int().positive().optional(),
  temperature: z.number().min(0).max(1).optional(),
  stream: z.boolean().optional(),
  conversation_id: z.string().min(1).optional(),
}).superRefine((body, ctx) => {
  if ((body.message === undefined) === (body.messages === undefined)) {
    ctx.addIssue({
      code: "custom",
      path: [],
      message: 'send exactly one of "message" (a string) or "messages" (the Messages API array)',
    });
  }
  if (body.conversation_id !== undefined && body.messages !== undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["messages"],
      message: 'with "conversation_id", send the new turn as "message"; the history is stored',
    });
  }
});

/** A validated `/chat` body. */
export type ChatBody = z.infer<typeof chatBodySchema>;

/** Parses and validates a `/chat` body; a 400 in Anthropic's shape names what is wrong. */
export function parseChatBody(text: string): ChatBody {
  const value = parseJsonObject(text, '{"message":"hi"}');
  const parsed = chatBodySchema.safeParse(value);
  if (!parsed.success) {
    throw new SluiceError(400, "invalid_request_error", describeIssues(parsed.error.issues));
  }
  return parsed.data;
}

/**
 * Parses `text` as JSON and requires an object; an empty body counts as `{}` only when
 * `emptyIsObject`. `example` goes into the error message.
 */
export function parseJsonObject(
  text: string,
  example: string,
  options: { emptyIsObject?: boolean } = {},
): unknown {
  if (text.trim() === "") {
    if (options.emptyIsObject) return {};
    throw new SluiceError(400, "invalid_request_error", `empty body: send JSON such as ${example}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new SluiceError(
      400,
      "invalid_request_error",
      `body is not valid JSON (${(error as Error).message}); send JSON such as ${example}`,
    );
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new SluiceError(400, "invalid_request_error", `body must be a JSON object: ${example}`);
  }
  return value;
}

/** Defaults `/chat` fills in. */
export interface ChatDefaults {
  model: string;
  maxTokens: number;
  /** A stored conversation's system prompt and model, used when the request has none. */
  system?: string;
  conversationModel?: string;
}

/** Builds the Messages API body (an object; encode it with {@link encodeJson}). */
export function buildMessagesBody(
  chat: ChatBody,
  defaults: ChatDefaults,
  history: readonly Turn[] = [],
): Record<string, unknown> {
  const messages = chat.messages ?? [...history, { role: "user", content: chat.message! }];
  const system = chat.system ?? defaults.system;
  return {
    model: chat.model ?? defaults.conversationModel ?? defaults.model,
    max_tokens: chat.max_tokens ?? defaults.maxTokens,
    ...(system !== undefined && system !== "" ? { system } : {}),
    ...(chat.temperature !== undefined ? { temperature: chat.temperature } : {}),
    messages,
    stream: chat.stream !== false,
  };
}

/** JSON as UTF-8 bytes, the form the upstream takes. */
export function encodeJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}
