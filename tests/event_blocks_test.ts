/**
 * The SSE block splitter behind resumable `/v1/messages` streams: blocks are the stream's own
 * bytes, cut exactly after each blank line, wherever the chunks fall and whatever the endings.
 */
import assert from "node:assert/strict";
import { createBlockSplitter, isEventBlock } from "../lib/stream/event_blocks.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { concatBytes } from "../lib/bytes.ts";
import { projectFixtures, seededRandom, splitRandom } from "./helpers.ts";

const encoder = new TextEncoder();

/** A stream's text with every line ending replaced by `ending`. */
function withEndings(text: string, ending: string): string {
  return text.replace(/\r\n|\r|\n/g, ending);
}

Deno.test("the splitter cuts every fixture into its events, byte for byte, at any chunking and line ending", async (t) => {
  const set = await projectFixtures();
  const random = seededRandom(23);
  for (const fixture of set.fixtures.values()) {
    if (!fixture.sse) continue;
    const text = new TextDecoder().decode(fixture.sse);
    for (const [name, ending] of [["LF", "\n"], ["CRLF", "\r\n"], ["CR", "\r"]]) {
      await t.step(`${fixture.name}, ${name}`, () => {
        const bytes = encoder.encode(withEndings(text, ending));
        for (let round = 0; round < 20; round++) {
          const splitter = createBlockSplitter();
          const blocks: Uint8Array[] = [];
          for (const chunk of splitRandom(bytes, random, 40)) blocks.push(...splitter.feed(chunk));
          const { blocks: last, rest } = splitter.end();
          blocks.push(...last);
          // Nothing lost, nothing added, in order.
          assert.deepEqual(concatBytes([...blocks, rest]), bytes);
          // Each event block is exactly one of the stream's events, and there is one per event.
          const events = blocks.filter(isEventBlock);
          assert.deepEqual(events.map((b) => decodeAll(b)), decodeAll(bytes).map((e) => [e]));
          // Whatever is not an event dispatches nothing (comments, stray blank lines).
          for (const block of blocks.filter((b) => !isEventBlock(b))) {
            assert.deepEqual(decodeAll(block), []);
          }
          // What is left over is an unended event, never a whole one.
          assert.deepEqual(
            decodeAll(concatBytes([rest, encoder.encode("\n\n")])).length <= 1,
            true,
          );
        }
      });
    }
  }
});

Deno.test("a block counts as an event only when it has a data field", () => {
  const cases: Array<[string, boolean]> = [
    ["event: ping\ndata: {}\n\n", true],
    ["data\n\n", true],
    ["data:x\r\n\r\n", true],
    [": keep-alive\n\n", false],
    ["\n", false],
    ["event: x\n\n", false],
    ["database: 1\n\n", false],
    [": data: in a comment\n\n", false],
  ];
  for (const [block, expected] of cases) {
    assert.equal(isEventBlock(encoder.encode(block)), expected, JSON.stringify(block));
    assert.equal(decodeAll(encoder.encode(block)).length === 1, expected, JSON.stringify(block));
  }
});
