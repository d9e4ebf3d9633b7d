/**
 * `/chat` with `"stream": false`: one JSON answer with the text, the whole message, usage and
 * timing.
 */
import type { Message } from "../stream/accumulator.ts";
import type { ChatDone } from "./encoding.ts";
import { messageText } from "./view.ts";

/** The JSON body of a non-streamed `/chat` answer. */
export interface ChatJsonAnswer extends ChatDone {
  type: "chat";
  text: string;
  message: Message;
}

/** Builds the non-streamed answer. */
export function chatJsonAnswer(message: Message, done: ChatDone): ChatJsonAnswer {
  return { type: "chat", text: messageText(message), ...done, message };
}

/** Reads a Messages API JSON body, or null when it is not a message. */
export function parseMessage(body: Uint8Array | undefined): Message | null {
  if (!body) return null;
  try {
    const value = JSON.parse(new TextDecoder().decode(body));
    return value && typeof value === "object" && value.type === "message" &&
        Array.isArray(value.content)
      ? value as Message
      : null;
  } catch {
    return null;
  }
}
