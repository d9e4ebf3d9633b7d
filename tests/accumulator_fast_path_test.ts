/**
 * The accumulator's shortcuts must be invisible: the text_delta fast path builds exactly what
 * `JSON.parse` builds or steps aside, and tool input parsed with `JSON.parse` first equals what
 * the SDK's `partialParse` makes of it.
 */
import assert from "node:assert/strict";
import { partialParse } from "@anthropic-ai/sdk/_vendor/partial-json-parser/parser";
import { EventAccumulator, parseDeltaEvent } from "../lib/stream/accumulator.ts";
import { createSseDecoder } from "../lib/stream/sse.ts";
import { seededRandom } from "./helpers.ts";

const delta = (index: string, text: string) =>
  `{"type":"content_block_delta","index":${index},"delta":{"type":"text_delta","text":"${text}"}}`;
const jsonDelta = (index: string, json: string) =>
  `{"type":"content_block_delta","index":${index},"delta":{"type":"input_json_delta","partial_json":"${json}"}}`;

Deno.test("the delta fast path builds what JSON.parse builds, keys in the same order", () => {
  const cases = [
    delta("0", "Hello"),
    delta("12", " world, naïve café 🌱"),
    delta("3", ""),
    delta("0", 'line\\nbreak and \\"quotes\\" and \\u00e9'),
    jsonDelta("1", '{\\"rows\\": [1, 2'),
    jsonDelta("2", ""),
    jsonDelta("0", "plain"),
  ];
  for (const data of cases) {
    const fast = parseDeltaEvent(data);
    assert.deepEqual(fast, JSON.parse(data));
    assert.equal(JSON.stringify(fast), JSON.stringify(JSON.parse(data)));
  }
});

Deno.test("the delta fast path steps aside for other shapes and for invalid JSON", () => {
  const declined = [
    delta("0", 'an "unescaped" quote'),
    delta("0", "a trailing backslash \\"),
    delta("0", "a bad escape \\x"),
    jsonDelta("0", '{"a'),
    delta("01", "x"), // a leading zero is not JSON
    delta("-1", "x"),
    delta("", "x"),
    delta("0", "tab\there"), // a raw control character is not JSON
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x","extra":1}}',
    '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"x"}}',
    '{"type":"content_block_delta", "index":0,"delta":{"type":"text_delta","text":"x"}}',
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}} ',
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}',
    '{"type":"content_block_delta","index":1234567890,"delta":{"type":"text_delta","text":"x"}}',
  ];
  for (const data of declined) assert.equal(parseDeltaEvent(data), undefined, data);
});

Deno.test("random text deltas: the fast path either matches JSON.parse or declines", () => {
  const random = seededRandom(99);
  let taken = 0;
  let declined = 0;
  const alphabet = ["a", " ", '"', "\\", "\\n", "é", "🌱", "\t", "}", "{", ",", ":"];
  for (let round = 0; round < 2000; round++) {
    let text = "";
    for (let i = Math.floor(random() * 8); i > 0; i--) {
      text += alphabet[Math.floor(random() * alphabet.length)];
    }
    const data = delta(String(Math.floor(random() * 20)), text);
    const fast = parseDeltaEvent(data);
    if (fast === undefined) {
      declined++;
      continue;
    }
    taken++;
    assert.deepEqual(fast, JSON.parse(data), data);
  }
  // Both branches were exercised.
  assert.ok(taken > 100 && declined > 100, `taken ${taken}, declined ${declined}`);
});

Deno.test("complete tool input is parsed to what the SDK's partialParse makes of it", () => {
  const inputs = [
    '{"a":1,"b":[true,false,null],"c":{"d":"e\\"f"}}',
    ' { "spaced" : [ 1.5e3 , -2 ] } ',
    '{"unicode":"\\u00e9\\ud83c\\udf31"}',
    "[]",
  ];
  for (const input of inputs) {
    const chunks = input.match(/.{1,3}/gs)!;
    const sse = [
      'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"x","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}\n\n',
      'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"n","input":{}}}\n\n',
      ...chunks.map((c) =>
        `event: content_block_delta\ndata: ${
          JSON.stringify({
            type: "content_block_delta",
            index: 0,
            delta: { type: "input_json_delta", partial_json: c },
          })
        }\n\n`
      ),
      'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    ].join("");
    const accumulator = new EventAccumulator();
    const decoder = createSseDecoder((event) => accumulator.push(event));
    decoder.feed(new TextEncoder().encode(sse));
    decoder.end();
    const block = accumulator.end().message!.content[0] as { input: unknown };
    assert.deepEqual(block.input, partialParse(input), input);
  }
});
