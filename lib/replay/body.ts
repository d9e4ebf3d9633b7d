/** Reading a Messages request body as replay needs it (it is never validated beyond this). */

/** A JSON object. */
export type Json = Record<string, unknown>;

/** Whether `value` is a JSON object (not an array, not null). */
export function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The last message of the request with `role: "user"`, if any. */
export function lastUserMessage(body: Json): Json | undefined {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  for (let i = messages.length - 1; i >= 0; i--) {
    const message = messages[i];
    if (isObject(message) && message.role === "user") return message;
  }
  return undefined;
}

/** The text of the last user message of a Messages request body (its text blocks). */
export function lastUserText(body: Record<string, unknown>): string {
  const content = lastUserMessage(body)?.content;
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .map((block) => isObject(block) && typeof block.text === "string" ? block.text : "")
    .filter((text) => text !== "")
    .join(" ");
}
