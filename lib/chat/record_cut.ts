/**
 * What is recorded when a resuming reader finds that the instance writing a stream died: the
 * dead instance recorded nothing, so the reader that declared the cut records it, once.
 */
import type { RouteDeps } from "../app_env.ts";
import type { ConversationStore } from "./conversations.ts";
import type { CutStream } from "./resume.ts";
import { EventAccumulator } from "../stream/accumulator.ts";
import { tokenUsage } from "../stats/request_summary.ts";

/**
 * Records a cut stream. Stats: a request with outcome `incomplete`, under the endpoint that
 * started it. A `/v1/messages` stream holds the upstream's own events, so its usage is what
 * they reached (`message_start`'s input tokens, the last `message_delta`'s output tokens); a
 * `/chat` stream holds text only, so its usage is unknown here and counts as 0. Conversation
 * (`/chat` only): the buffered text as the assistant turn, marked incomplete.
 */
export async function recordCut(
  deps: RouteDeps,
  store: ConversationStore | undefined,
  keyId: string,
  { head, events }: CutStream,
): Promise<void> {
  const endpoint = head.endpoint ?? "/chat";
  const now = deps.clock.now();
  let usage = tokenUsage(undefined);
  let model = head.model;
  if (endpoint !== "/chat") {
    const accumulator = new EventAccumulator();
    for (const event of events) accumulator.push(event);
    const message = accumulator.end().message as unknown as Record<string, unknown> | null;
    usage = tokenUsage(message?.usage);
    if (typeof message?.model === "string") model = message.model;
  }
  deps.record(Promise.resolve({
    id: head.requestId,
    endpoint,
    streaming: true,
    model,
    outcome: "incomplete",
    status: 200,
    retries: 0,
    startedAt: head.startedAt,
    ttftMs: null,
    totalMs: now - head.startedAt,
    upstreamTtftMs: null,
    usage,
    stopReason: null,
    events: {},
    keyId,
  }));
  if (endpoint !== "/chat") return;
  const text = events.filter((event) => event.event === "text")
    .map((event) => {
      try {
        return String(JSON.parse(event.data).text ?? "");
      } catch {
        return ""; // not one of ours; skip it
      }
    })
    .join("");
  // An empty assistant turn could not be sent upstream again: then nothing is stored.
  if (!store || !head.conversationId || head.message === null || text === "") return;
  await store.append(keyId, head.conversationId, [
    { role: "user", content: head.message },
    { role: "assistant", content: text, incomplete: true },
  ]);
}
