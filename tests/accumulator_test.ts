import assert from "node:assert/strict";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { createSseDecoder } from "../lib/stream/sse.ts";
import { FIXTURES_DIR, sdkOracle } from "./helpers.ts";
import { agreeOnFiles, assertAgrees, sseFiles } from "./sdk_agreement.ts";
import { messageEnd, messageStart, sse, textStream, toolStream } from "../bench/streams.ts";

Deno.test("every project fixture accumulates to what the official SDK builds from the same bytes", async (t) => {
  const files = await sseFiles(FIXTURES_DIR);
  assert.ok(files.length >= 12, "the project ships at least 12 fixtures");
  await agreeOnFiles(t, files);
});

Deno.test("streams of thousands of deltas accumulate to what the official SDK builds", async (t) => {
  // Long enough to cross the points where the accumulator flattens what it has appended (every
  // 64 pieces, and when the number of chunks doubles), in text, thinking and tool input.
  const thinkingThenText = [
    messageStart("msg_long_thinking"),
    sse("content_block_start", {
      type: "content_block_start",
      index: 0,
      content_block: { type: "thinking", thinking: "", signature: "" },
    }),
  ];
  for (let i = 0; i < 700; i++) {
    thinkingThenText.push(sse("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "thinking_delta", thinking: `step ${i}; ` },
    }));
  }
  thinkingThenText.push(
    sse("content_block_delta", {
      type: "content_block_delta",
      index: 0,
      delta: { type: "signature_delta", signature: "sig" },
    }),
    sse("content_block_stop", { type: "content_block_stop", index: 0 }),
    sse("content_block_start", {
      type: "content_block_start",
      index: 1,
      content_block: { type: "text", text: "" },
    }),
  );
  for (let i = 0; i < 1500; i++) {
    thinkingThenText.push(sse("content_block_delta", {
      type: "content_block_delta",
      index: 1,
      delta: { type: "text_delta", text: `word${i} ` },
    }));
  }
  thinkingThenText.push(
    sse("content_block_stop", { type: "content_block_stop", index: 1 }),
    ...messageEnd(2200, "end_turn"),
  );
  const encoder = new TextEncoder();
  const streams = [
    textStream(5000),
    toolStream(3000),
    {
      name: "700 thinking deltas then 1,500 text deltas",
      chunks: thinkingThenText.map((part) => encoder.encode(part)),
    },
  ];
  for (const stream of streams) {
    await t.step(stream.name, async () => {
      const sdk = await sdkOracle(stream.chunks);
      assert.ok(sdk.finalMessage, "the SDK completes this stream");
      const seen: string[] = [];
      let snapshotsAgree = true;
      const accumulator = new EventAccumulator({
        observer: {
          onText: (delta, snapshot) => {
            seen.push(delta);
            // Every 97th: the text so far equals all deltas joined (checking each would be
            // quadratic in the stream's length).
            if (seen.length % 97 === 0 && snapshot !== seen.join("")) snapshotsAgree = false;
          },
        },
      });
      const decoder = createSseDecoder((event) => accumulator.push(event));
      for (const chunk of stream.chunks) decoder.feed(chunk);
      decoder.end();
      assertAgrees(accumulator.end(), sdk, stream.name);
      assert.deepEqual(seen, sdk.texts);
      assert.ok(snapshotsAgree, "onText's snapshot is the text so far");
    });
  }
});
