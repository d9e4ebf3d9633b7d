import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { EventAccumulator } from "../lib/accumulator.ts";
import { createReplayFetch, pickFixture, schedule } from "../lib/replay.ts";
import { createSseDecoder, decodeAll } from "../lib/sse.ts";
import { clean, projectFixtures } from "./helpers.ts";

const INSTANT = { ttftMs: 0, tokensPerSecond: 1e9, speed: 0 };

function post(body: Record<string, unknown>, headers: Record<string, string> = {}): Request {
  return new Request("http://replay.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

const ask = (content: string, extra: Record<string, unknown> = {}) => ({
  model: "m",
  max_tokens: 1024,
  messages: [{ role: "user", content }],
  ...extra,
});

Deno.test("a request picks its fixture by header, then by the manifest's rules, then the default", async (t) => {
  const set = await projectFixtures();
  const cases: [string, Record<string, unknown>, string | null, string][] = [
    ["the header wins", ask("write an essay"), "refusal", "refusal"],
    ["a three-word request", ask("Write me a 3 word sentence"), null, "three-words"],
    ["an essay with room", ask("Write me an essay about tides"), null, "essay"],
    [
      "an essay cut at 500 tokens",
      ask("Write an essay", { max_tokens: 500 }),
      null,
      "essay-max-tokens",
    ],
    [
      "tools and weather",
      ask("weather in Paris?", { tools: [{ name: "get_weather" }] }),
      null,
      "tool-use-split",
    ],
    [
      "thinking",
      ask("solve this", { thinking: { type: "enabled", budget_tokens: 1024 } }),
      null,
      "thinking",
    ],
    ["anything else", ask("hello there"), null, "default"],
    ["no messages at all", { model: "m", max_tokens: 5 }, null, "default"],
  ];
  for (const [name, body, header, expected] of cases) {
    await t.step(name, () => assert.equal(pickFixture(set, body, header)?.name, expected));
  }
});

Deno.test("an unknown fixture name is a 404 that lists the fixtures there are", async () => {
  const fetch = createReplayFetch(await projectFixtures(), { pace: INSTANT });
  const response = await fetch(post(ask("hi", { stream: true }), { "x-sluice-fixture": "nope" }));
  assert.equal(response.status, 404);
  const body = await response.json();
  assert.equal(body.error.type, "not_found_error");
  assert.match(body.error.message, /three-words/);
});

Deno.test("every streamed fixture is served byte for byte", async (t) => {
  const set = await projectFixtures();
  const fetch = createReplayFetch(set, { pace: INSTANT });
  for (const fixture of set.fixtures.values()) {
    if (!fixture.sse) continue;
    await t.step(fixture.name, async () => {
      const response = await fetch(
        post(ask("x", { stream: true }), { "x-sluice-fixture": fixture.name }),
      );
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type") ?? "", /^text\/event-stream/);
      assert.deepEqual(new Uint8Array(await response.arrayBuffer()), fixture.sse);
    });
  }
});

Deno.test("a non-streaming request gets the message its stream accumulates to", async (t) => {
  const set = await projectFixtures();
  const fetch = createReplayFetch(set, { pace: INSTANT });
  for (const name of ["three-words", "essay", "default", "thinking", "web-search", "citations"]) {
    await t.step(name, async () => {
      const response = await fetch(post(ask("x"), { "x-sluice-fixture": name }));
      assert.equal(response.status, 200);
      const accumulator = new EventAccumulator();
      const decoder = createSseDecoder((e) => accumulator.push(e));
      decoder.feed(set.fixtures.get(name)!.sse!);
      decoder.end();
      assert.deepEqual(await response.json(), clean(accumulator.end().message));
    });
  }
});

Deno.test("a fixture whose stream errors answers non-streaming requests with that error", async () => {
  const fetch = createReplayFetch(await projectFixtures(), { pace: INSTANT });
  const response = await fetch(post(ask("x"), { "x-sluice-fixture": "overloaded-mid-stream" }));
  assert.equal(response.status, 529);
  assert.equal((await response.json()).error.type, "overloaded_error");
});

Deno.test("HTTP error fixtures come back with their status, headers and body", async () => {
  const set = await projectFixtures();
  const fetch = createReplayFetch(set, { pace: INSTANT });
  const fixture = set.fixtures.get("rate-limited")!.http!;
  const response = await fetch(
    post(ask("x", { stream: true }), { "x-sluice-fixture": "rate-limited" }),
  );
  assert.equal(response.status, fixture.status);
  assert.equal(response.headers.get("retry-after"), fixture.headers["retry-after"]);
  assert.deepEqual(await response.json(), fixture.body);
});

Deno.test("without recorded timing, the first content delta is scheduled at the TTFT and later ones at the token rate", async () => {
  const set = await projectFixtures();
  const fixture = set.fixtures.get("essay")!;
  const chunks = schedule(fixture, { ttftMs: 500, tokensPerSecond: 50, speed: 1 });
  const deltaTimes = chunks
    .filter((c) => decodeAll(c.bytes).some((e) => e.event === "content_block_delta"))
    .map((c) => c.atMs);
  assert.equal(deltaTimes[0], 500);
  for (let i = 1; i < deltaTimes.length; i++) assert.ok(deltaTimes[i] > deltaTimes[i - 1]);
  // Doubling the speed halves every time.
  const fast = schedule(fixture, { ttftMs: 500, tokensPerSecond: 50, speed: 2 });
  assert.deepEqual(fast.map((c) => c.atMs * 2), chunks.map((c) => c.atMs));
});

Deno.test("recorded timing is replayed chunk by chunk as recorded", () => {
  const sse = new TextEncoder().encode("event: a\ndata: 1\n\nevent: b\ndata: 2\n\n");
  const chunks = schedule(
    { name: "t", sse, timing: [{ at_ms: 10, bytes: 5 }, { at_ms: 250, bytes: sse.length - 5 }] },
    { ttftMs: 0, tokensPerSecond: 1, speed: 1 },
  );
  assert.deepEqual(chunks.map((c) => [c.atMs, c.bytes.length]), [[10, 5], [250, sse.length - 5]]);
});

Deno.test("a paced replay waits for each chunk's time, and stops when the request is aborted", async () => {
  const clock = FakeTimers.withGlobal(globalThis).install({
    toFake: ["setTimeout", "clearTimeout"],
  });
  try {
    const fetch = createReplayFetch(await projectFixtures(), {
      pace: { ttftMs: 1_000, tokensPerSecond: 10, speed: 1 },
    });
    const controller = new AbortController();
    const response = await fetch(
      post(ask("x", { stream: true }), { "x-sluice-fixture": "essay" }),
      { signal: controller.signal },
    );
    const reader = response.body!.getReader();
    const first = reader.read();
    let settled = false;
    first.then(() => (settled = true));
    await clock.tickAsync(999);
    assert.equal(settled, false, "nothing before the TTFT");
    await clock.tickAsync(1);
    assert.equal((await first).done, false);
    controller.abort();
    await assert.rejects(async () => {
      for (;;) {
        const next = reader.read();
        next.catch(() => {}); // observed below, after the clock moves
        await clock.tickAsync(10_000);
        if ((await next).done) break;
      }
    });
  } finally {
    clock.uninstall();
  }
});
