/**
 * Writes a KV file that holds a month of use, for the request bench's `sluice-history` path:
 * what sluice's own code writes (the stats sink, the conversation store), not a hand-made copy
 * of its layout.
 *
 * - Stats: `--requests` finished requests spread over 30 days, one process (instance) a day as
 *   after daily restarts, several models and endpoints, streamed and not, some errors. Each
 *   day's recent-requests log (200 entries an instance) is kept, as if it had not expired yet.
 * - Conversations: `--conversations` of them, over `--owners` keys, 6 to 20 turns each.
 *
 * A request's path must cost the same on this file as on a fresh one: nothing on it may scan,
 * list or rewrite what grows with history (see docs/performance.md).
 *
 * Run: deno task bench:history [--out .sluice/bench-history.sqlite3] [--requests 60000]
 */
import { parseArgs } from "node:util";
import { manualClock } from "../lib/clock.ts";
import { createConversationStore } from "../lib/chat/conversations.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import type { RequestSummary } from "../lib/stats/request_summary.ts";

const DAY_MS = 24 * 60 * 60_000;
const MODELS = ["claude-sonnet-5-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-bench"];
const ENDPOINTS = ["/v1/messages", "/v1/messages", "/chat", "/v1/chat/completions"];
const OUTCOMES = ["ok", "ok", "ok", "ok", "ok", "ok", "ok", "overloaded_error", "client_aborted"];

/** Options for {@link writeHistory}. */
export interface HistoryOptions {
  path: string;
  requests?: number;
  conversations?: number;
  owners?: number;
  days?: number;
  /** When the month ends (epoch ms); now by default. */
  end?: number;
}

/** One made-up request of day `day`, the `i`th of the month. */
function summary(i: number, startedAt: number): RequestSummary {
  const outcome = OUTCOMES[i % OUTCOMES.length];
  const streaming = i % 3 !== 0;
  const ttft = 200 + (i * 37) % 1800;
  return {
    id: `req_history_${i}`,
    endpoint: ENDPOINTS[i % ENDPOINTS.length],
    streaming,
    model: MODELS[(i >> 2) % MODELS.length],
    outcome,
    status: outcome === "ok" ? 200 : outcome === "client_aborted" ? 499 : 529,
    retries: i % 17 === 0 ? 1 : 0,
    startedAt,
    ttftMs: outcome === "ok" ? ttft : null,
    totalMs: ttft + (i * 101) % 9000,
    upstreamTtftMs: outcome === "ok" ? ttft - 1 : null,
    usage: {
      input_tokens: 100 + i % 5000,
      output_tokens: 10 + i % 900,
      cache_creation_input_tokens: i % 7 === 0 ? 1000 : 0,
      cache_read_input_tokens: i % 5 === 0 ? 2000 : 0,
    },
    stopReason: outcome === "ok" ? "end_turn" : null,
    events: streaming ? { message_start: 1, content_block_delta: 20 + i % 300, ping: 1 } : {},
    keyId: `key${i % 8}`,
  };
}

/** Writes the month into a new KV file at `options.path` (an existing file is replaced). */
export async function writeHistory(options: HistoryOptions): Promise<void> {
  const requests = options.requests ?? 60_000;
  const conversations = options.conversations ?? 3_000;
  const owners = options.owners ?? 8;
  const days = options.days ?? 30;
  const end = options.end ?? Date.now();
  await Deno.remove(options.path).catch(() => {});
  const kv = await Deno.openKv(options.path);
  try {
    const clock = manualClock(end - days * DAY_MS);
    const perDay = Math.ceil(requests / days);
    for (let day = 0; day < days; day++) {
      // A new instance a day, as after a restart: its window keys and recent log are its own.
      const stats = createKvStats({ kv, clock, instanceId: `history-day-${day}` });
      for (let j = 0; j < perDay && day * perDay + j < requests; j++) {
        clock.set(end - (days - day) * DAY_MS + (j * DAY_MS) / perDay);
        await stats.record(summary(day * perDay + j, clock.now()));
        if (j % 500 === 499) await stats.flush();
      }
      await stats.flush();
    }
    const store = createConversationStore({
      kv,
      clock,
      limits: { maxTurns: 100, maxBytes: 60_000, ttlMs: 90 * DAY_MS },
    });
    for (let i = 0; i < conversations; i++) {
      clock.set(end - days * DAY_MS + (i * days * DAY_MS) / conversations);
      const owner = `key${i % owners}`;
      const conversation = await store.create(owner, { model: MODELS[i % MODELS.length] });
      for (let turn = 0; turn < 3 + i % 8; turn++) {
        await store.append(owner, conversation.id, [
          {
            role: "user",
            content: `question ${turn} of conversation ${i}: ${"words ".repeat(40)}`,
          },
          { role: "assistant", content: `answer ${turn}: ${"more words ".repeat(80)}` },
        ]);
      }
    }
  } finally {
    kv.close();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      out: { type: "string", default: ".sluice/bench-history.sqlite3" },
      requests: { type: "string", default: "60000" },
      conversations: { type: "string", default: "3000" },
    },
  });
  const dir = values.out.includes("/") ? values.out.slice(0, values.out.lastIndexOf("/")) : ".";
  await Deno.mkdir(dir, { recursive: true });
  const started = performance.now();
  await writeHistory({
    path: values.out,
    requests: Number(values.requests),
    conversations: Number(values.conversations),
  });
  const { size } = await Deno.stat(values.out);
  console.log(
    `${values.out}: ${values.requests} requests over 30 days, ${values.conversations} ` +
      `conversations, ${(size / 1024 / 1024).toFixed(1)} MiB, in ${
        ((performance.now() - started) / 1000).toFixed(1)
      } s`,
  );
}
