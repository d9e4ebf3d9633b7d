/**
 * The gateway benchmark's fake Messages API (a subprocess of bench/gateway_bench.ts): streams a
 * text answer at a set pace, a first text delta after `--ttft` ms, then one every `--interval` ms
 * (`stream: false` gets the whole message at once).
 *
 * Every text delta carries the moment it was written, `|<ms>|` in its text, on this process's
 * `performance.timeOrigin + performance.now()`; the load client converts it to its own clock
 * (offset measured through `GET /clock`) and so measures each delta's latency on one clock.
 *
 * The number of deltas, their interval and the TTFT can come from the request's
 * `metadata.user_id` (`deltas=N;interval=MS;ttft=MS`), a field every path under test forwards unchanged, so warm-up runs
 * can be short and one level can run at another pace.
 *
 * Run: deno run --allow-net=127.0.0.1 bench/fake_upstream.ts --ttft 100 --interval 10 --deltas 100
 */
import { parseArgs } from "node:util";
import { messageEnd, messageStart, sse } from "./streams.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    ttft: { type: "string", default: "100" },
    interval: { type: "string", default: "10" },
    deltas: { type: "string", default: "100" },
  },
});
const ttftMs = Number(values.ttft);
const intervalMs = Number(values.interval);
const defaultDeltas = Number(values.deltas);

const encoder = new TextEncoder();
const now = () => performance.timeOrigin + performance.now();
const head = encoder.encode(
  messageStart("msg_bench") +
    sse("content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "text", text: "" },
    }) + sse("ping", { type: "ping" }),
);
const DELTA_HEAD = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' +
  '"delta":{"type":"text_delta","text":" token |';
const DELTA_TAIL = '|"}}\n\n';

interface Pace {
  deltas: number;
  interval: number;
  ttft: number;
}

function paceOf(body: unknown): Pace {
  const userId = (body as { metadata?: { user_id?: unknown } })?.metadata?.user_id;
  const fields = new URLSearchParams(typeof userId === "string" ? userId.replaceAll(";", "&") : "");
  const deltas = Number(fields.get("deltas") ?? defaultDeltas);
  const interval = Number(fields.get("interval") ?? intervalMs);
  const ttft = Number(fields.get("ttft") ?? ttftMs);
  return {
    deltas: Number.isInteger(deltas) && deltas > 0 ? Math.min(100_000, deltas) : defaultDeltas,
    interval: Number.isFinite(interval) && interval >= 0 ? interval : intervalMs,
    ttft: Number.isFinite(ttft) && ttft >= 0 ? ttft : ttftMs,
  };
}

/** A whole message, for `stream: false` (written at once). */
function message(deltas: number): string {
  return JSON.stringify({
    id: "msg_bench",
    type: "message",
    role: "assistant",
    model: "claude-bench",
    content: [{ type: "text", text: " token".repeat(deltas) }],
    stop_reason: "end_turn",
    stop_sequence: null,
    usage: { input_tokens: 12, output_tokens: deltas * 2 },
  });
}

/**
 * One paced answer. Deltas are scheduled from the start, so a late timer does not shift the rest.
 * With a TTFT of 0 the first delta is written with the head, at once (the request bench's
 * upstream "answers at once").
 */
function pacedStream({ deltas, interval, ttft }: Pace) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return new ReadableStream<Uint8Array>({
    start(controller) {
      const start = performance.now();
      let sent = 0;
      controller.enqueue(head);
      const tick = () => {
        // Stamp as late as possible: the string is built around the time, then written.
        controller.enqueue(encoder.encode(DELTA_HEAD + now().toFixed(3) + DELTA_TAIL));
        sent++;
        if (sent < deltas) {
          const due = start + ttft + sent * interval;
          timer = setTimeout(tick, Math.max(0, due - performance.now()));
          return;
        }
        controller.enqueue(encoder.encode(
          sse("content_block_stop", { type: "content_block_stop", index: 0 }) +
            messageEnd(deltas * 2, "end_turn").join(""),
        ));
        controller.close();
      };
      if (ttft === 0) tick();
      else timer = setTimeout(tick, ttft);
    },
    cancel() {
      clearTimeout(timer);
    },
  });
}

Deno.serve({
  hostname: "127.0.0.1",
  port: 0,
  onListen: ({ port }) => console.log(JSON.stringify({ port })),
}, async (request) => {
  const url = new URL(request.url);
  if (url.pathname === "/clock") return new Response(String(now()));
  if (request.method === "POST" && url.pathname === "/v1/messages") {
    let body: unknown = null;
    try {
      body = await request.json();
    } catch {
      // the paths under test always send JSON; a default-length stream is fine otherwise
    }
    const pace = paceOf(body);
    if ((body as { stream?: unknown } | null)?.stream !== true) {
      return new Response(message(pace.deltas), {
        headers: { "content-type": "application/json", "request-id": "req_bench" },
      });
    }
    return new Response(pacedStream(pace), {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "request-id": "req_bench",
      },
    });
  }
  return new Response("not found", { status: 404 });
});
