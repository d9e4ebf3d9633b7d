/**
 * What `/stats` calls TTFT is what the client sees, less the network: from the moment the request
 * reaches sluice to the moment the first text delta is handed to the socket (a whole body, for a
 * non-streamed request). Checked against the client's own clock on loopback: client, sluice and
 * the fake upstream run in this process, on one clock (`performance.timeOrigin + now()`, which
 * sluice's system clock reads too), so every moment can be ordered against every other. The
 * checks are orderings and containments, never durations.
 */
import assert from "node:assert/strict";
import { systemClock } from "../lib/clock.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import type { RequestSummary } from "../lib/stats/request_summary.ts";
import { messageEnd, messageStart, sse } from "../bench/streams.ts";
import { liveApp, ownConnections, serveOnLoopback, startFakeUpstream } from "./helpers.ts";

const now = () => systemClock.now();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const encoder = new TextEncoder();
const delta = (text: string) =>
  sse("content_block_delta", {
    type: "content_block_delta",
    index: 0,
    delta: { type: "text_delta", text },
  });

/** What the fake upstream saw of one request: when it arrived, when the first delta left. */
interface UpstreamMoments {
  arrived: number;
  wrote?: number;
}

function upstream(moments: UpstreamMoments[]) {
  return startFakeUpstream(async (request) => {
    const seen: UpstreamMoments = { arrived: now() };
    moments.push(seen);
    const body = await request.json();
    if (!body.stream) {
      await sleep(15);
      seen.wrote = now();
      return Response.json({
        id: "msg_ttft",
        type: "message",
        role: "assistant",
        model: "claude-sonnet-5-5",
        content: [{ type: "text", text: "whole" }],
        stop_reason: "end_turn",
        stop_sequence: null,
        usage: { input_tokens: 3, output_tokens: 1 },
      });
    }
    const stream = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(encoder.encode(
          messageStart("msg_ttft") +
            sse("content_block_start", {
              type: "content_block_start",
              index: 0,
              content_block: { type: "text", text: "" },
            }),
        ));
        // The first delta comes later than the head, as the API's does.
        await sleep(15);
        seen.wrote = now();
        controller.enqueue(encoder.encode(delta("first")));
        await sleep(10);
        controller.enqueue(encoder.encode(
          delta(" second") + sse("content_block_stop", { type: "content_block_stop", index: 0 }) +
            messageEnd(2, "end_turn").join(""),
        ));
        controller.close();
      },
    });
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  }, { readBodies: false });
}

/** One request as the client sees it: when it was sent, when its first delta (or body) arrived. */
async function clientRequest(url: string, stream: boolean) {
  const connection = ownConnections();
  try {
    const sent = now();
    const response = await connection.fetch(`${url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "claude-sonnet-5-5",
        max_tokens: 16,
        stream,
        messages: [{ role: "user", content: "hi" }],
      }),
    });
    assert.equal(response.status, 200);
    let received: number | undefined;
    const decoder = new TextDecoder();
    let text = "";
    for await (const chunk of response.body!) {
      text += decoder.decode(chunk, { stream: true });
      if (received === undefined && (!stream || text.includes("text_delta"))) received = now();
    }
    if (!stream) received = now(); // the whole body
    return { sent, received: received! };
  } finally {
    connection.close();
  }
}

Deno.test("/stats TTFT lies inside what the client saw and contains what the upstream took", async (t) => {
  const kv = await Deno.openKv(":memory:");
  const kvStats = createKvStats({ kv, writeIntervalMs: 0 });
  const summaries: RequestSummary[] = [];
  const stats = {
    ...kvStats,
    record(summary: RequestSummary) {
      summaries.push(summary);
      return kvStats.record(summary);
    },
  };
  const moments: UpstreamMoments[] = [];
  const fake = upstream(moments);
  const sluice = serveOnLoopback(liveApp(fake.url, {}, { stats, kv }));
  try {
    for (const stream of [true, false]) {
      await t.step(
        stream ? "streamed: to the first text delta" : "non-streamed: to the whole body",
        async () => {
          for (let i = 0; i < 5; i++) {
            const client = await clientRequest(sluice.url, stream);
            await kvStats.flush();
            const summary = summaries.at(-1)!;
            const seen = moments.at(-1)!;
            assert.equal(summaries.length, moments.length, "one summary per upstream call");
            const arrived = summary.startedAt;
            const handedOver = summary.startedAt + summary.ttftMs!;
            // client sent ≤ sluice got it ≤ upstream got it ≤ upstream wrote ≤ handed to the
            // socket ≤ the client has it.
            assert.ok(client.sent <= arrived, "the request reached sluice after it was sent");
            assert.ok(arrived <= seen.arrived, "sluice got it before the upstream did");
            assert.ok(seen.arrived <= seen.wrote!, "the upstream wrote after it got the request");
            assert.ok(
              seen.wrote! <= handedOver,
              "sluice handed it over after the upstream wrote it",
            );
            assert.ok(
              handedOver <= client.received,
              "the client got it after sluice handed it over",
            );
            const recent = await (await fetch(`${sluice.url}/stats/recent?limit=1`)).json();
            // /stats shows this figure, to the microsecond it rounds to.
            assert.ok(Math.abs(recent.requests[0].ttft_ms - summary.ttftMs!) <= 0.0005);
          }
        },
      );
    }
  } finally {
    await sluice.close();
    await fake.close();
    await kvStats.flush();
    kv.close();
  }
});
