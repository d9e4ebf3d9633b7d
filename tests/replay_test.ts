import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { type Fixture } from "../lib/replay/fixtures.ts";
import { ReplayCutError, schedule } from "../lib/replay/pace.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { truncateAtMaxTokens } from "../lib/replay/rewrite.ts";
import { pickFixture, selectFixture } from "../lib/replay/select.ts";
import { createSseDecoder, decodeAll } from "../lib/stream/sse.ts";
import { clean, liveApp, projectFixtures, replayApp, sdkOracle, seededRandom } from "./helpers.ts";

const INSTANT = { ttftMs: 0, tokensPerSecond: 1e9, speed: 0 };
const dec = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

function post(body: unknown, headers: Record<string, string> = {}): Request {
  return new Request("http://replay.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

const ask = (content: unknown, extra: Record<string, unknown> = {}) => ({
  model: "m",
  max_tokens: 1024,
  messages: [{ role: "user", content }],
  ...extra,
});

/** The model a fixture's `message_start` names. */
function fixtureModel(fixture: Fixture): string {
  const start = decodeAll(fixture.sse!).find((e) => e.event === "message_start")!;
  return JSON.parse(start.data).message.model;
}

/** Reads a body to its end; a body that errors gives what came before, and the error. */
async function readAll(response: Response): Promise<{ bytes: Uint8Array; error: unknown }> {
  const reader = response.body!.getReader();
  const chunks: number[] = [];
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { bytes: new Uint8Array(chunks), error: null };
      chunks.push(...value);
    }
  } catch (error) {
    return { bytes: new Uint8Array(chunks), error };
  }
}

/** The message a stream accumulates to. */
function accumulate(bytes: Uint8Array) {
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((e) => accumulator.push(e));
  decoder.feed(bytes);
  decoder.end();
  return accumulator.end();
}

const weatherTool = {
  name: "get_weather",
  description: "Weather for a city",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

Deno.test("a request picks its fixture by name, then by tool results, then by the manifest's rules, then the default", async (t) => {
  const set = await projectFixtures();
  const toolTurn = {
    model: "m",
    max_tokens: 100,
    tools: [weatherTool],
    messages: [
      { role: "user", content: "weather in Paris?" },
      {
        role: "assistant",
        content: [{ type: "tool_use", id: "toolu_1", name: "get_weather", input: { city: "P" } }],
      },
      { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_1", content: "sun" }] },
    ],
  };
  const cases: [string, Record<string, unknown>, string | null, string][] = [
    ["the header names it", ask("write an essay"), "refusal", "named:refusal"],
    [
      "a marker in the prompt names it",
      ask("hi [fixture:connection-cut] there"),
      null,
      "named:connection-cut",
    ],
    [
      "a marker in a text block names it",
      ask([{ type: "text", text: "[fixture: overloaded-mid-stream]" }]),
      null,
      "named:overloaded-mid-stream",
    ],
    ["the header wins over a marker", ask("[fixture:essay]"), "refusal", "named:refusal"],
    ["a three-word request", ask("Write me a 3 word sentence"), null, "rule:three-words"],
    ["a three-word story", ask("now a three-word story"), null, "rule:three-words"],
    ["an essay asked for", ask("Write me an essay about tides"), null, "rule:essay"],
    ["an essay asked for tersely", ask("An essay on lighthouses"), null, "rule:essay"],
    ["a question about essays", ask("What is an essay?"), null, "default:default"],
    [
      "a tool the weather fixture calls",
      ask("weather in Paris?", { tools: [weatherTool] }),
      null,
      "rule:tool-use-split",
    ],
    [
      "tools the fixtures do not call",
      ask("list files", { tools: [{ name: "Bash" }, { name: "Read" }] }),
      null,
      "default:default",
    ],
    [
      "thinking",
      ask("solve this", { thinking: { type: "enabled", budget_tokens: 1024 } }),
      null,
      "rule:thinking",
    ],
    ["tool results", toolTurn, null, "tool-result"],
    [
      "tool results, even when a tool-call fixture is named",
      toolTurn,
      "tool-use-split",
      "tool-result",
    ],
    [
      "tool results with another fixture named",
      toolTurn,
      "overloaded-mid-stream",
      "named:overloaded-mid-stream",
    ],
    ["anything else", ask("hello there"), null, "default:default"],
    ["no messages at all", { model: "m", max_tokens: 5 }, null, "default:default"],
  ];
  for (const [name, body, header, expected] of cases) {
    await t.step(name, () => {
      const selection = selectFixture(set, body, header);
      const got = "fixture" in selection
        ? `${selection.kind}:${selection.fixture.name}`
        : selection.kind;
      assert.equal(got, expected);
    });
  }
  await t.step("words that used to pick failures pick the default", () => {
    for (
      const prompt of [
        "Execute the plan",
        "How do I cut a string in Python?",
        "How long is a year?",
        "the future of unknown languages",
        "translate this emoji",
        "rate limit, overload, disconnect, crlf, padding",
        "cite your source document",
        "latest news: search for malware exploit history",
        "redacted",
      ]
    ) {
      assert.equal(pickFixture(set, ask(prompt))?.name, "default", prompt);
    }
  });
});

Deno.test("an unknown fixture name, by header or marker, is a 404 that lists the fixtures there are", async (t) => {
  const fetch = createReplayFetch(await projectFixtures(), { pace: INSTANT });
  for (
    const [name, request] of [
      ["header", post(ask("hi", { stream: true }), { "x-sluice-fixture": "nope" })],
      ["marker", post(ask("hi [fixture:nope]", { stream: true }))],
    ] as const
  ) {
    await t.step(name, async () => {
      const response = await fetch(request);
      assert.equal(response.status, 404);
      const body = await response.json();
      assert.equal(body.error.type, "not_found_error");
      assert.match(body.error.message, /"nope".*three-words/);
      // As the API's error bodies do, it names its request.
      assert.match(body.request_id, /^req_replay_/);
      assert.equal(body.request_id, response.headers.get("request-id"));
    });
  }
});

Deno.test("every streamed fixture asked for by name with its own model is served byte for byte", async (t) => {
  const set = await projectFixtures();
  const fetch = createReplayFetch(set, { pace: INSTANT });
  for (const fixture of set.fixtures.values()) {
    if (!fixture.sse) continue;
    await t.step(fixture.name, async () => {
      const response = await fetch(
        post(ask("x", { stream: true, model: fixtureModel(fixture) }), {
          "x-sluice-fixture": fixture.name,
        }),
      );
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type") ?? "", /^text\/event-stream/);
      const { bytes, error } = await readAll(response);
      assert.deepEqual(bytes, fixture.sse);
      // A recording that ends inside an event is a cut connection: the body errors after it.
      const cut = !/(\n\n|\r\n\r\n|\r\r)$/.test(dec(fixture.sse!));
      assert.equal(error instanceof ReplayCutError, cut);
    });
  }
});

Deno.test("another requested model is echoed in message_start, and that is the only byte that changes", async (t) => {
  const set = await projectFixtures();
  const fetch = createReplayFetch(set, { pace: INSTANT });
  for (const fixture of set.fixtures.values()) {
    if (!fixture.sse) continue;
    await t.step(fixture.name, async () => {
      const model = "claude-opus-4-5-requested";
      const response = await fetch(
        post(ask("x", { stream: true, model }), { "x-sluice-fixture": fixture.name }),
      );
      const { bytes } = await readAll(response);
      const original = fixtureModel(fixture);
      const text = dec(fixture.sse!);
      const at = text.indexOf(`"${original}"`);
      const expected = text.slice(0, at) + `"${model}"` + text.slice(at + original.length + 2);
      assert.equal(dec(bytes), expected);
      const start = decodeAll(bytes).find((e) => e.event === "message_start")!;
      assert.equal(JSON.parse(start.data).message.model, model);
    });
  }
});

Deno.test("a non-streaming request gets the message its stream accumulates to, naming the requested model", async (t) => {
  const set = await projectFixtures();
  const fetch = createReplayFetch(set, { pace: INSTANT });
  for (const name of ["three-words", "essay", "default", "thinking", "web-search", "citations"]) {
    await t.step(name, async () => {
      const response = await fetch(post(ask("x"), { "x-sluice-fixture": name }));
      assert.equal(response.status, 200);
      const expected = clean(accumulate(set.fixtures.get(name)!.sse!).message) as Record<
        string,
        unknown
      >;
      assert.deepEqual(await response.json(), { ...expected, model: "m" });
    });
  }
});

Deno.test("a fixture whose stream errors answers non-streaming requests with that error", async () => {
  const fetch = createReplayFetch(await projectFixtures(), { pace: INSTANT });
  const response = await fetch(post(ask("x"), { "x-sluice-fixture": "overloaded-mid-stream" }));
  assert.equal(response.status, 529);
  assert.equal((await response.json()).error.type, "overloaded_error");
});

Deno.test("a cut recording asked for without streaming is a 502 api_error in Anthropic's shape", async () => {
  const fetch = createReplayFetch(await projectFixtures(), { pace: INSTANT });
  const response = await fetch(post(ask("[fixture:connection-cut]", { stream: false })));
  assert.equal(response.status, 502);
  const body = await response.json();
  assert.equal(body.type, "error");
  assert.equal(body.error.type, "api_error");
  assert.match(body.error.message, /dropped/);
  assert.equal(body.request_id, response.headers.get("request-id"));
});

Deno.test("replay's own errors name their request, as the API's do", async (t) => {
  const fetch = createReplayFetch(await projectFixtures(), { pace: INSTANT });
  const cases: [string, Request][] = [
    [
      "an endpoint replay does not serve",
      new Request("http://replay/v1/files", { method: "POST" }),
    ],
    [
      "a body that is not JSON",
      new Request("http://replay/v1/messages", { method: "POST", body: "{" }),
    ],
    [
      "count_tokens without JSON",
      new Request("http://replay/v1/messages/count_tokens", { method: "POST", body: "{" }),
    ],
    ["an unknown model", new Request("http://replay/v1/models/claude-nope")],
    ["a bad page size", new Request("http://replay/v1/models?limit=0")],
    [
      "a stream's error, not streamed",
      post(ask("x"), { "x-sluice-fixture": "overloaded-mid-stream" }),
    ],
  ];
  for (const [name, request] of cases) {
    await t.step(name, async () => {
      const response = await fetch(request);
      assert.ok(response.status >= 400, String(response.status));
      const body = await response.json();
      assert.equal(body.type, "error");
      assert.match(body.request_id, /^req_replay_/);
      assert.equal(body.request_id, response.headers.get("request-id"));
    });
  }
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

Deno.test("an ordinary answer longer than max_tokens is cut there as the API cuts it", async (t) => {
  const set = await projectFixtures();
  const fetch = createReplayFetch(set, { pace: INSTANT });
  const full = accumulate(set.fixtures.get("default")!.sse!).message!;
  const fullText = (full.content[0] as { text: string }).text;
  for (const maxTokens of [1, 20, 150]) {
    await t.step(`max_tokens ${maxTokens}, streamed`, async () => {
      const response = await fetch(post(ask("hello", { stream: true, max_tokens: maxTokens })));
      const bytes = new Uint8Array(await response.arrayBuffer());
      const oracle = await sdkOracle([bytes]);
      assert.equal(oracle.error, null);
      const message = oracle.finalMessage as typeof full;
      assert.equal(message.stop_reason, "max_tokens");
      assert.equal(message.usage.output_tokens, maxTokens);
      const text = (message.content[0] as { text: string }).text;
      assert.ok(text.length > 0 && text.length < fullText.length, `${text.length} characters`);
      assert.ok(fullText.startsWith(text));
    });
    await t.step(`max_tokens ${maxTokens}, not streamed`, async () => {
      const response = await fetch(post(ask("hello", { max_tokens: maxTokens })));
      const message = await response.json();
      assert.equal(message.stop_reason, "max_tokens");
      assert.equal(message.usage.output_tokens, maxTokens);
      assert.ok(fullText.startsWith(message.content[0].text));
    });
  }
  await t.step(
    "a tool call cut by max_tokens has no content_block_stop, as the API sends it",
    async () => {
      const response = await fetch(
        post(ask("weather?", { stream: true, max_tokens: 40, tools: [weatherTool] })),
      );
      const bytes = new Uint8Array(await response.arrayBuffer());
      const events = decodeAll(bytes);
      const stops = events.filter((e) => e.event === "content_block_stop").length;
      const starts = events.filter((e) => e.event === "content_block_start").length;
      assert.equal(starts - stops, 1, "the tool block is left open");
      const oracle = await sdkOracle([bytes]);
      assert.equal(oracle.error, null);
      assert.equal((oracle.finalMessage as { stop_reason: string }).stop_reason, "max_tokens");
    },
  );
  await t.step("a cut never splits a character", () => {
    const multibyte = set.fixtures.get("multibyte")!.sse!;
    for (let maxTokens = 1; maxTokens < 120; maxTokens++) {
      const cut = truncateAtMaxTokens(multibyte, maxTokens);
      if (!cut) break;
      const message = accumulate(cut).message!;
      const text = (message.content[0] as { text: string }).text;
      assert.ok(text.isWellFormed(), `max_tokens ${maxTokens}`);
      assert.equal(message.stop_reason, "max_tokens");
    }
  });
  await t.step("an answer that fits is served whole", async () => {
    const response = await fetch(post(ask("hello", { stream: true, max_tokens: 4096 })));
    const message = accumulate(new Uint8Array(await response.arrayBuffer())).message!;
    assert.equal(message.stop_reason, "end_turn");
    assert.equal((message.content[0] as { text: string }).text, fullText);
  });
  await t.step(
    "a fixture asked for by name is served as recorded whatever max_tokens says",
    async () => {
      const response = await fetch(
        post(ask("hello", { stream: true, max_tokens: 3 }), { "x-sluice-fixture": "essay" }),
      );
      const message = accumulate(new Uint8Array(await response.arrayBuffer())).message!;
      assert.equal(message.stop_reason, "end_turn");
    },
  );
});

Deno.test("a turn of tool results gets a final text answer quoting them", async (t) => {
  const fetch = createReplayFetch(await projectFixtures(), { pace: INSTANT });
  const body = (stream: boolean, isError = false) => ({
    model: "claude-haiku-4-5",
    max_tokens: 1024,
    stream,
    tools: [weatherTool],
    messages: [
      { role: "user", content: "weather in Paris?" },
      {
        role: "assistant",
        content: [
          { type: "text", text: "Checking." },
          { type: "tool_use", id: "toolu_9", name: "get_weather", input: { city: "Paris" } },
        ],
      },
      {
        role: "user",
        content: [{
          type: "tool_result",
          tool_use_id: "toolu_9",
          is_error: isError,
          content: [{ type: "text", text: "18°C and sunny in Paris" }],
        }],
      },
    ],
  });
  await t.step("streamed", async () => {
    const response = await fetch(post(body(true)));
    assert.equal(response.headers.get("x-sluice-fixture"), "tool-result");
    const oracle = await sdkOracle([new Uint8Array(await response.arrayBuffer())]);
    const message = oracle.finalMessage as { stop_reason: string; model: string; content: [] };
    assert.equal(message.stop_reason, "end_turn");
    assert.equal(message.model, "claude-haiku-4-5");
    assert.match(oracle.texts.join(""), /get_weather tool returned: 18°C and sunny in Paris/);
  });
  await t.step("not streamed, an error result", async () => {
    const message = await (await fetch(post(body(false, true)))).json();
    assert.equal(message.type, "message");
    assert.equal(message.stop_reason, "end_turn");
    assert.deepEqual(message.content.map((b: { type: string }) => b.type), ["text"]);
    assert.match(message.content[0].text, /get_weather tool reported an error: 18°C/);
  });
});

Deno.test("replay accepts every request the API accepts, and never throws on a JSON object", async (t) => {
  const fetch = createReplayFetch(await projectFixtures(), { pace: INSTANT });
  const image = {
    type: "image",
    source: { type: "base64", media_type: "image/png", data: "iVBO" },
  };
  const document = {
    type: "document",
    source: { type: "text", media_type: "text/plain", data: "The grass is green." },
    citations: { enabled: true },
  };
  const bodies: [string, unknown][] = [
    ["thinking", ask("think", { thinking: { type: "enabled", budget_tokens: 2048 } })],
    ["adaptive thinking", ask("think", { thinking: { type: "adaptive" } })],
    ["an image and a document with citations", ask([image, document, { type: "text", text: "?" }])],
    ["server tools", ask("news", { tools: [{ type: "web_search_20250305", name: "web_search" }] })],
    [
      "a system message mid-conversation",
      {
        model: "m",
        max_tokens: 10,
        messages: [
          { role: "user", content: "hi" },
          { role: "system", content: "be brief" },
          { role: "user", content: "go" },
        ],
      },
    ],
    ["unknown fields", ask("hi", { future_field: { x: 1 }, metadata: { user_id: "u" } })],
    ["content of odd shapes", ask([null, 3, "x", { type: "text" }, { text: 5 }])],
    ["messages that are not a list", { model: "m", messages: "x", tools: "y", thinking: 7 }],
    ["an empty object", {}],
    [
      "tool results of odd shapes",
      ask([{ type: "tool_result", content: [null, { type: "image" }] }]),
    ],
  ];
  for (const [name, body] of bodies) {
    for (const stream of [true, false]) {
      await t.step(`${name}, stream ${stream}`, async () => {
        const response = await fetch(post({ ...(body as object), stream }));
        assert.equal(response.status, 200);
        const bytes = new Uint8Array(await response.arrayBuffer());
        if (stream) assert.equal(accumulate(bytes).complete, true);
        else assert.equal(JSON.parse(dec(bytes)).type, "message");
      });
    }
  }
  await t.step("a JSON body that is not an object is a 400", async () => {
    for (const body of [null, [], 3, "x"]) {
      const response = await fetch(post(body));
      assert.equal(response.status, 400);
      assert.equal((await response.json()).error.type, "invalid_request_error");
    }
  });
});

Deno.test("without recorded timing, message_start goes at once, the first content delta at the TTFT and later ones at the token rate", async () => {
  const set = await projectFixtures();
  const fixture = set.fixtures.get("essay")!;
  const chunks = schedule(fixture, { ttftMs: 500, tokensPerSecond: 50, speed: 1 });
  assert.equal(chunks[0].atMs, 0);
  assert.deepEqual(decodeAll(chunks[0].bytes).map((e) => e.event), ["message_start"]);
  assert.ok(chunks.slice(1).every((c) => c.atMs >= 500));
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

Deno.test("a paced replay sends message_start at once, waits for each later chunk's time, and stops when the request is aborted", async () => {
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
    const start = await reader.read();
    assert.deepEqual(decodeAll(start.value!).map((e) => e.event), ["message_start"]);
    const next = reader.read();
    let settled = false;
    next.then(() => (settled = true));
    await clock.tickAsync(999);
    assert.equal(settled, false, "nothing more before the TTFT");
    await clock.tickAsync(1);
    assert.equal((await next).done, false);
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

Deno.test("GET /v1/replay/fixtures lists every fixture, how to ask for it, and which are on request only", async () => {
  const set = await projectFixtures();
  const fetch = createReplayFetch(set, { pace: INSTANT });
  const response = await fetch(new Request("http://replay.test/v1/replay/fixtures"));
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.ok(body.selection.length > 0);
  const listed = body.fixtures as {
    name: string;
    description: string | null;
    served_when: string | null;
    ask: { header: string; marker: string };
  }[];
  assert.deepEqual(listed.map((f) => f.name), [...set.fixtures.keys()].sort());
  for (const f of listed) {
    assert.ok(f.description, `${f.name} has a description`);
    assert.equal(f.ask.header, `x-sluice-fixture: ${f.name}`);
    assert.equal(f.ask.marker, `[fixture:${f.name}]`);
  }
  const ruled = new Set([set.defaultFixture, ...set.rules.map((r) => r.fixture)]);
  for (const f of listed) assert.equal(f.served_when === null, !ruled.has(f.name), f.name);
  for (const quirk of ["connection-cut", "overloaded-mid-stream", "unknown-event", "multibyte"]) {
    assert.equal(listed.find((f) => f.name === quirk)!.served_when, null, quirk);
  }
});

// --- ordinary prompts --------------------------------------------------------------------------

/** Words that once picked failure recordings, among ordinary ones. */
const WORDS = [
  "cut",
  "overload",
  "overloaded",
  "future",
  "unknown",
  "language",
  "languages",
  "emoji",
  "translate",
  "rate",
  "limit",
  "malware",
  "exploit",
  "crlf",
  "padding",
  "disconnect",
  "cite",
  "citation",
  "source",
  "document",
  "search",
  "news",
  "latest",
  "weather",
  "redacted",
  "essay",
  "essays",
  "long",
  "history",
  "three",
  "3",
  "word",
  "words",
  "error",
  "stream",
  "refusal",
  "plan",
  "execute",
  "year",
  "how",
  "what",
  "is",
  "the",
  "a",
  "of",
  "please",
  "tell",
  "me",
  "about",
  "tides",
  "python",
  "string",
  "list",
  "file",
  "server",
  "connection",
  "token",
  "max",
  "tokens",
];
const QUESTIONS = [
  "How do I cut a string in Python?",
  "Execute the plan",
  "How long is a year?",
  "What does `git rebase --onto` do?",
  "Why does my Rust code say borrowed value does not live long enough?",
  "Write a SQL query that finds duplicate emails",
  "Explain the future of unknown languages",
  "Is this code an exploit? `eval(input())`",
  "Quelle est la capitale de l'Australie ?",
  "¿Cómo se dice 'rate limit' en español?",
  "日本語で自己紹介してください",
  "Расскажи историю про кота",
  "ما هو أفضل كتاب؟",
  "Translate 'overloaded' into German 🇩🇪",
  "source: document.txt, please cite it",
  "search the latest news about crlf padding",
];

function ordinaryPrompt(random: () => number): string {
  const pick = <T>(items: T[]) => items[Math.floor(random() * items.length)];
  const kind = random();
  if (kind < 0.4) return pick(QUESTIONS);
  const words = Array.from({ length: 1 + Math.floor(random() * 12) }, () => pick(WORDS));
  return kind < 0.7 ? words.join(" ") : `${pick(QUESTIONS)} ${words.join(" ")}`;
}

Deno.test("two thousand ordinary prompts get ordinary answers: no failure or quirk fixture, no 5xx (seed 20261202)", async () => {
  const random = seededRandom(20261202);
  const set = await projectFixtures();
  const app = await replayApp();
  // What an ordinary request may get: the fixtures rules and the default pick, and the answer
  // to tool results.
  const ordinary = new Set([set.defaultFixture, ...set.rules.map((r) => r.fixture)]);
  const seen = new Map<string, number>();
  for (let i = 0; i < 2000; i++) {
    const stream = random() < 0.5;
    const body: Record<string, unknown> = {
      model: "claude-haiku-4-5",
      max_tokens: random() < 0.2 ? 1 + Math.floor(random() * 200) : 1024,
      stream,
      messages: [{ role: "user", content: ordinaryPrompt(random) }],
    };
    if (random() < 0.15) body.tools = [{ name: "Bash", input_schema: { type: "object" } }];
    if (random() < 0.1) body.thinking = { type: "enabled", budget_tokens: 1024 };
    const where = `case ${i}: ${JSON.stringify(body)}`;
    const response = await app.request(
      new Request("http://sluice.test/v1/messages", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      }),
    );
    assert.equal(response.status, 200, where);
    const fixture = response.headers.get("x-sluice-fixture") ?? "";
    assert.ok(ordinary.has(fixture), `${where}: got ${fixture}`);
    seen.set(fixture, (seen.get(fixture) ?? 0) + 1);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const message = stream
      ? (() => {
        const result = accumulate(bytes);
        assert.equal(result.complete, true, where);
        assert.equal(result.error, null, where);
        return result.message as unknown as Record<string, unknown>;
      })()
      : JSON.parse(dec(bytes));
    assert.equal(message.model, "claude-haiku-4-5", where);
    assert.ok(["end_turn", "max_tokens"].includes(message.stop_reason as string), where);
  }
  console.log(`ordinary prompts: ${JSON.stringify(Object.fromEntries(seen))}`);
  assert.ok(seen.size >= 3, "the rules were reached too");
});

Deno.test("GET /v1/replay/fixtures is served in replay mode and a 404 in live mode", async (t) => {
  await t.step("replay", async () => {
    const response = await (await replayApp()).request("http://sluice.test/v1/replay/fixtures");
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.ok(body.fixtures.some((f: { name: string }) => f.name === "connection-cut"));
  });
  await t.step("live", async () => {
    const app = liveApp("http://127.0.0.1:9"); // never reached
    const response = await app.request("http://sluice.test/v1/replay/fixtures");
    assert.equal(response.status, 404);
    assert.equal((await response.json()).error.type, "not_found_error");
  });
});
