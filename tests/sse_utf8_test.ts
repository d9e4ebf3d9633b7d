/**
 * The decoder decodes each chunk in one shot and carries an unfinished UTF-8 sequence to the next
 * chunk (faster than a streaming TextDecoder in Deno). These tests hold it to the streaming
 * decoder's output on hostile bytes: multi-byte characters cut anywhere, invalid and truncated
 * sequences, and byte-order marks at and after the start.
 */
import { concatBytes } from "../lib/bytes.ts";
import assert from "node:assert/strict";
import { createParser, type EventSourceMessage } from "eventsource-parser";
import { completeUtf8Length, createSseDecoder, type SseEvent } from "../lib/stream/sse.ts";
import { seededRandom, splitEvery, splitRandom } from "./helpers.ts";

const concat = (...parts: Uint8Array[]) => concatBytes(parts);
const enc = (s: string) => new TextEncoder().encode(s);

/** The reference: a streaming TextDecoder in front of eventsource-parser. */
function reference(chunks: Uint8Array[]): EventSourceMessage[] {
  const events: EventSourceMessage[] = [];
  const text = new TextDecoder();
  const parser = createParser({ onEvent: (event) => events.push(event) });
  for (const chunk of chunks) parser.feed(text.decode(chunk, { stream: true }));
  parser.feed(text.decode());
  return events;
}

function decode(chunks: Uint8Array[]): SseEvent[] {
  const events: SseEvent[] = [];
  const decoder = createSseDecoder((event) => events.push(event));
  for (const chunk of chunks) decoder.feed(chunk);
  decoder.end();
  return events;
}

Deno.test("completeUtf8Length keeps back only a multi-byte character that is still missing bytes", () => {
  const euro = enc("€"); // E2 82 AC
  const plant = enc("🌱"); // F0 9F 8C B1
  assert.equal(completeUtf8Length(enc("abc")), 3);
  assert.equal(completeUtf8Length(concat(enc("a"), euro)), 4);
  assert.equal(completeUtf8Length(concat(enc("a"), euro.subarray(0, 2))), 1);
  assert.equal(completeUtf8Length(concat(enc("a"), euro.subarray(0, 1))), 1);
  assert.equal(completeUtf8Length(plant), 4);
  assert.equal(completeUtf8Length(plant.subarray(0, 3)), 0);
  assert.equal(completeUtf8Length(new Uint8Array([0x80, 0x80, 0x80])), 3);
  assert.equal(completeUtf8Length(new Uint8Array()), 0);
});

Deno.test("the decoder gives the streaming decoder's events for text cut inside characters", () => {
  const bytes = enc(
    'event: a\ndata: {"text":"naïve café — 🌱 ok"}\n\n\uFEFFevent: b\ndata: \uFEFF€€€\n\n' +
      "event: c\ndata: 日本語のテキスト🌱🌱\r\n\r\n",
  );
  for (const size of [1, 2, 3, 5]) {
    assert.deepEqual(decode(splitEvery(bytes, size)), reference(splitEvery(bytes, size)));
  }
  const random = seededRandom(7);
  for (let round = 0; round < 50; round++) {
    const chunks = splitRandom(bytes, random, 8);
    assert.deepEqual(decode(chunks), reference(chunks), `round ${round}`);
  }
});

Deno.test("the decoder treats invalid and truncated UTF-8 exactly as the streaming decoder does", () => {
  const random = seededRandom(2026);
  // Bytes biased towards lead and continuation bytes, between well-formed SSE framing.
  const pool = [0x41, 0x0a, 0x80, 0xbf, 0xc2, 0xc0, 0xe0, 0xe2, 0xed, 0xf0, 0xf4, 0xf8, 0xff, 0x82];
  for (let round = 0; round < 300; round++) {
    const noise = Array.from(
      { length: 1 + Math.floor(random() * 12) },
      () => pool[Math.floor(random() * pool.length)],
    ).filter((b) => b !== 0x0a);
    const bytes = concat(
      enc("event: x\ndata: "),
      new Uint8Array(noise),
      enc("\n\nevent: y\ndata: "),
      new Uint8Array(noise.slice().reverse()),
      enc("\n\n"),
    );
    const chunks = splitRandom(bytes, random, 4);
    assert.deepEqual(decode(chunks), reference(chunks), `bytes ${Array.from(bytes)}`);
  }
});

Deno.test("a character cut off by the end of the stream does not hide the events before it", () => {
  const bytes = concat(enc("event: a\ndata: x\n\n"), enc("€").subarray(0, 2));
  assert.deepEqual(decode([bytes]), reference([bytes]));
  assert.equal(decode([bytes]).length, 1);
});

Deno.test("one leading byte-order mark is dropped, and only one, as the SSE spec says", () => {
  const one = enc("\uFEFFevent: a\ndata: x\n\n");
  const two = enc("\uFEFF\uFEFFevent: a\ndata: x\n\n");
  for (const size of [1, 2, 4, 64]) {
    assert.deepEqual(decode(splitEvery(one, size)), [{ event: "a", data: "x", id: undefined }]);
    // The second U+FEFF is text: it makes "\uFEFFevent" an unknown field, which is ignored. (A
    // streaming TextDecoder in front of eventsource-parser strips both, one each.)
    assert.deepEqual(decode(splitEvery(two, size)), [{
      event: undefined,
      data: "x",
      id: undefined,
    }]);
  }
});
