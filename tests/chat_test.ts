import assert from "node:assert/strict";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { createApp } from "../lib/app.ts";
import { chatFormat, statsRequested } from "../lib/chat/encoding.ts";
import { buildMessagesBody, parseChatBody } from "../lib/chat/request.ts";
import { SluiceError } from "../lib/errors.ts";
import { silentLogger } from "../lib/log.ts";
import type { Pace } from "../lib/replay/pace.ts";
import { loadFixtures } from "../lib/replay/fixtures.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { pageAssetNames } from "../lib/page/assets.ts";
import { FIXTURES_DIR, readFixture, testConfig } from "./helpers.ts";

const INSTANT: Pace = { ttftMs: 0, tokensPerSecond: 1e9, speed: 0 };

/** What a fixture's stream amounts to, computed from its bytes (the expected answer). */
async function expected(fixture: string) {
  const accumulator = new EventAccumulator();
  for (const event of decodeAll(await readFixture(`${fixture}.sse`))) accumulator.push(event);
  const result = accumulator.end();
  const text = (result.message?.content ?? [])
    .map((block) => (block.type === "text" ? block.text : ""))
    .join("");
  return { text, result };
}

/**
 * An app on replay whose upstream fetch records each request body and signal. `sleep` lets a
 * test hold the stream (a sleep that only ends on abort stalls it after the first delta).
 */
async function chatApp(
  options: {
    env?: Record<string, string>;
    pace?: Pace;
    sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
    keepAliveMs?: number;
  } = {},
) {
  const replay = createReplayFetch(await loadFixtures(FIXTURES_DIR), {
    pace: options.pace ?? INSTANT,
    sleep: options.sleep,
  });
  const sent: Record<string, unknown>[] = [];
  const signals: AbortSignal[] = [];
  const upstream = createUpstream({
    mode: "replay",
    apiKey: "replay",
    baseURL: "http://replay.test",
    maxRetries: 0,
    streamPolicy: { keepAliveMs: options.keepAliveMs ?? 0 },
    fetch: async (input, init) => {
      sent.push(await new Request(input, init).json());
      if (init?.signal) signals.push(init.signal);
      return replay(input, init);
    },
  });
  const kv = await Deno.openKv(":memory:");
  const stats = memorySink();
  const app = createApp({
    config: testConfig(options.env),
    upstream,
    logger: silentLogger,
    stats,
    kv,
  });
  const chat = (body: unknown, headers: Record<string, string> = {}, query = "") =>
    app.request(`/chat${query}`, {
      method: "POST",
      // What `curl -d` sends: sluice must read the body as JSON anyway.
      headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
  return { app, kv, sent, signals, stats, chat };
}

/** Reads a body chunk by chunk, as the client sees it arrive. */
async function chunksOf(response: Response): Promise<string[]> {
  const chunks: string[] = [];
  const decoder = new TextDecoder();
  for await (const chunk of response.body!) chunks.push(decoder.decode(chunk, { stream: true }));
  return chunks;
}

/** Parses the small SSE view into `{event, data}` pairs. */
function chatEvents(text: string) {
  return decodeAll(new TextEncoder().encode(text)).map((event) => ({
    event: event.event,
    data: JSON.parse(event.data),
  }));
}

/** Waits until `predicate` holds (stats are recorded off the response path). */
async function eventually(predicate: () => boolean, what: string) {
  for (let i = 0; i < 200 && !predicate(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(predicate(), `timed out waiting for ${what}`);
}

Deno.test("/chat answers curl with plain text streamed piece by piece", async (t) => {
  const { kv, chat, stats } = await chatApp();
  try {
    await t.step(
      "the body is read as JSON even when sent as a form, and only text comes back",
      async () => {
        const response = await chat({ message: "Tell me about sluice" });
        assert.equal(response.status, 200);
        assert.equal(response.headers.get("content-type"), "text/plain; charset=utf-8");
        assert.equal(response.headers.get("x-content-type-options"), "nosniff");
        const chunks = await chunksOf(response);
        const { text } = await expected("default");
        assert.equal(chunks.join(""), `${text}\n`);
        // Flushed as it arrives: many writes, not one at the end.
        assert.ok(chunks.length > 10, `expected many chunks, got ${chunks.length}`);
      },
    );

    await t.step("the request is recorded in stats as /chat", async () => {
      await eventually(() => stats.records.length === 1, "the stats record");
      const [summary] = stats.records;
      assert.equal(summary.endpoint, "/chat");
      assert.equal(summary.outcome, "ok");
      assert.equal(summary.streaming, true);
      const { result } = await expected("default");
      assert.equal(summary.usage.output_tokens, result.message!.usage.output_tokens);
    });

    await t.step("?stats appends one line with TTFT, tokens and the request id", async () => {
      const response = await chat({ message: "Tell me about sluice" }, {}, "?stats=1");
      const body = await response.text();
      const { text, result } = await expected("default");
      assert.ok(body.startsWith(`${text}\n`));
      const last = body.slice(text.length + 1);
      assert.match(last, /^\[sluice\] ttft \d+ ms · \d+ in \/ \d+ out tokens · .* · end_turn · /);
      assert.ok(last.includes(`${result.message!.usage.output_tokens} out tokens`));
      assert.ok(last.includes(response.headers.get("request-id")!));
      assert.ok(last.endsWith("\n"));
    });

    await t.step("?stats=0 leaves the plain text alone", async () => {
      const body = await (await chat({ message: "three word story" }, {}, "?stats=0")).text();
      assert.equal(body, `${(await expected("three-words")).text}\n`);
    });
  } finally {
    kv.close();
  }
});

Deno.test("/chat speaks small SSE events when the client accepts text/event-stream", async (t) => {
  const { kv, chat } = await chatApp();
  try {
    const response = await chat({ message: "Tell me about sluice" }, {
      accept: "text/event-stream",
    });
    const events = chatEvents(await response.text());
    const { text, result } = await expected("default");

    await t.step("a start event first, with the request id", () => {
      assert.equal(response.headers.get("content-type"), "text/event-stream; charset=utf-8");
      assert.equal(events[0].event, "start");
      assert.equal(events[0].data.request_id, response.headers.get("request-id"));
      assert.equal(events[0].data.conversation_id, null);
    });

    await t.step("then text events that add up to the answer", () => {
      const texts = events.filter((e) => e.event === "text");
      assert.ok(texts.length > 10);
      assert.equal(texts.map((e) => e.data.text).join(""), text);
      assert.ok(texts.every((e) => typeof e.data.text === "string" && e.data.text !== ""));
    });

    await t.step("then one done event with stop reason, usage and timing", () => {
      const done = events.at(-1)!;
      assert.equal(done.event, "done");
      assert.equal(events.filter((e) => e.event === "done").length, 1);
      assert.equal(done.data.stop_reason, result.message!.stop_reason);
      assert.equal(done.data.usage.output_tokens, result.message!.usage.output_tokens);
      assert.equal(done.data.usage.input_tokens, result.message!.usage.input_tokens);
      assert.equal(typeof done.data.ttft_ms, "number");
      assert.ok(done.data.total_ms >= done.data.ttft_ms);
      assert.equal(done.data.request_id, response.headers.get("request-id"));
      assert.equal(done.data.model, result.message!.model);
    });
  } finally {
    kv.close();
  }
});

Deno.test("/chat with stream false answers one JSON object", async () => {
  const { kv, chat, stats } = await chatApp();
  try {
    const response = await chat({ message: "three word story", stream: false });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), "application/json");
    const body = await response.json();
    const { text, result } = await expected("three-words");
    assert.equal(body.text, text);
    assert.equal(body.message.type, "message");
    assert.deepEqual(body.message.content, result.message!.content);
    assert.equal(body.usage.output_tokens, result.message!.usage.output_tokens);
    assert.equal(body.stop_reason, "end_turn");
    assert.equal(typeof body.total_ms, "number");
    assert.equal(body.request_id, response.headers.get("request-id"));
    await eventually(() => stats.records.length === 1, "the stats record");
    assert.equal(stats.records[0].streaming, false);
    assert.equal(stats.records[0].endpoint, "/chat");
  } finally {
    kv.close();
  }
});

Deno.test("/chat with stream false answers one JSON object even when the upstream streams its answer", async (t) => {
  /** An app whose upstream answers every request with the `fixture` stream, whatever it asked. */
  function streamingUpstreamApp(fixture: Uint8Array) {
    const upstream = createUpstream({
      mode: "live",
      apiKey: "sk-test",
      baseURL: "http://upstream.test",
      maxRetries: 0,
      fetch: () =>
        Promise.resolve(
          new Response(fixture as BodyInit, {
            headers: { "content-type": "text/event-stream", "request-id": "req_up" },
          }),
        ),
    });
    return createApp({ config: testConfig(), upstream, logger: silentLogger, stats: memorySink() });
  }
  const ask = (app: ReturnType<typeof createApp>) =>
    app.request("/chat", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ message: "three word story", stream: false }),
    });
  await t.step("a whole stream: its message", async () => {
    const response = await ask(streamingUpstreamApp(await readFixture("three-words.sse")));
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), "application/json");
    const body = await response.json();
    const { text, result } = await expected("three-words");
    assert.equal(body.text, text);
    assert.deepEqual(body.message.content, result.message!.content);
    assert.equal(body.stop_reason, "end_turn");
    assert.equal(body.request_id, "req_up");
  });
  await t.step(
    "a stream that ends in an error event: that error, with the API's status",
    async () => {
      const response = await ask(
        streamingUpstreamApp(await readFixture("overloaded-mid-stream.sse")),
      );
      assert.equal(response.status, 529);
      assert.equal(response.headers.get("content-type"), "application/json");
      const body = await response.json();
      assert.equal(body.type, "error");
      assert.equal(body.error.type, "overloaded_error");
      assert.equal(body.request_id, "req_up");
    },
  );
  await t.step("a stream that breaks off: a 502 api_error", async () => {
    const response = await ask(streamingUpstreamApp(await readFixture("connection-cut.sse")));
    assert.equal(response.status, 502);
    const body = await response.json();
    assert.equal(body.type, "error");
    assert.equal(body.error.type, "api_error");
  });
});

Deno.test("/chat builds the Messages request from its small body", async (t) => {
  const { kv, chat, sent } = await chatApp({
    env: { SLUICE_DEFAULT_MODEL: "claude-default-test", SLUICE_CHAT_MAX_TOKENS: "321" },
  });
  try {
    await t.step("defaults: the configured model and max_tokens, streaming", async () => {
      await (await chat({ message: "hi" })).text();
      assert.deepEqual(sent.at(-1), {
        model: "claude-default-test",
        max_tokens: 321,
        messages: [{ role: "user", content: "hi" }],
        stream: true,
      });
    });
    await t.step("model, max_tokens, system and temperature are passed on", async () => {
      await (await chat({
        message: "hi",
        model: "claude-other",
        max_tokens: 50,
        system: "Be brief.",
        temperature: 0.2,
        stream: false,
      })).text();
      assert.deepEqual(sent.at(-1), {
        model: "claude-other",
        max_tokens: 50,
        system: "Be brief.",
        temperature: 0.2,
        messages: [{ role: "user", content: "hi" }],
        stream: false,
      });
    });
    await t.step("a messages array goes upstream as it is", async () => {
      const messages = [
        { role: "user", content: "Hello" },
        { role: "assistant", content: "Hi!" },
        { role: "user", content: [{ type: "text", text: "three word story" }] },
      ];
      await (await chat({ messages })).text();
      assert.deepEqual(sent.at(-1)!.messages, messages);
    });
  } finally {
    kv.close();
  }
});

Deno.test("/chat refuses bad bodies with a 400 in Anthropic's shape, before any upstream call", async (t) => {
  const { kv, chat, sent } = await chatApp();
  try {
    const cases: [string, unknown, RegExp][] = [
      ["an empty body", "", /empty body/],
      ["invalid JSON", "{message: hi}", /not valid JSON/],
      ["a JSON array", "[1]", /JSON object/],
      ["neither message nor messages", { model: "x" }, /exactly one of "message"/],
      ["both message and messages", {
        message: "a",
        messages: [{ role: "user", content: "b" }],
      }, /exactly one/],
      ["a mistyped field", { mesage: "hi" }, /mesage/],
      ["an empty message", { message: "" }, /message/],
      ["a temperature out of range", { message: "hi", temperature: 3 }, /temperature/],
      ["a non-integer max_tokens", { message: "hi", max_tokens: 1.5 }, /max_tokens/],
      ["stream as a string", { message: "hi", stream: "no" }, /stream/],
      ["a wrong role", { messages: [{ role: "system", content: "x" }] }, /role/],
      ["messages with a conversation", {
        conversation_id: "conv_x",
        messages: [{ role: "user", content: "x" }],
      }, /conversation_id/],
    ];
    for (const [what, body, pattern] of cases) {
      await t.step(what, async () => {
        const response = await chat(body);
        assert.equal(response.status, 400);
        const error = await response.json();
        assert.equal(error.type, "error");
        assert.equal(error.error.type, "invalid_request_error");
        assert.match(error.error.message, pattern);
        assert.equal(typeof error.request_id, "string");
      });
    }
    assert.equal(sent.length, 0);
  } finally {
    kv.close();
  }
});

Deno.test("/chat passes an upstream error before the stream as JSON with its status", async () => {
  const { kv, chat } = await chatApp();
  try {
    const response = await chat({ message: "[fixture:rate-limited] me" });
    assert.equal(response.status, 429);
    assert.equal(response.headers.get("content-type"), "application/json");
    assert.ok(response.headers.get("retry-after"));
    const body = await response.json();
    assert.equal(body.type, "error");
    assert.equal(body.error.type, "rate_limit_error");
  } finally {
    kv.close();
  }
});

Deno.test("/chat reports failures after the stream started in-band", async (t) => {
  const { kv, chat, stats } = await chatApp();
  try {
    const overloaded = await expected("overloaded-mid-stream");

    await t.step("plain text: the text so far, then a marked error line last", async () => {
      const body = await (await chat({ message: "[fixture:overloaded-mid-stream]" })).text();
      const lines = body.split("\n");
      assert.equal(lines.at(-1), "");
      assert.equal(
        lines.at(-2),
        `[sluice error] ${overloaded.result.error!.type}: ${overloaded.result.error!.message}`,
      );
      assert.ok(body.startsWith(overloaded.text));
      assert.ok(overloaded.text.length > 0);
    });

    await t.step("SSE: text events, then an error event and no done", async () => {
      const response = await chat({ message: "[fixture:overloaded-mid-stream]" }, {
        accept: "text/event-stream",
      });
      const events = chatEvents(await response.text());
      const last = events.at(-1)!;
      assert.equal(last.event, "error");
      assert.deepEqual(last.data, {
        type: "error",
        error: overloaded.result.error,
      });
      assert.equal(events.some((e) => e.event === "done"), false);
    });

    await t.step("a cut connection ends with an api_error event saying so", async () => {
      const response = await chat({ message: "[fixture:connection-cut] please" }, {
        accept: "text/event-stream",
      });
      const events = chatEvents(await response.text());
      const texts = events.filter((e) => e.event === "text").map((e) => e.data.text).join("");
      assert.equal(texts, (await expected("connection-cut")).text);
      const last = events.at(-1)!;
      assert.equal(last.event, "error");
      assert.equal(last.data.error.type, "api_error");
      assert.match(last.data.error.message, /incomplete|ended/);
    });

    await t.step("the failures are recorded with their outcome", async () => {
      await eventually(() => stats.records.length === 3, "three stats records");
      assert.deepEqual(stats.records.map((r) => r.outcome).slice(0, 2), [
        "overloaded_error",
        "overloaded_error",
      ]);
      assert.equal(stats.records[2].outcome, "incomplete");
    });
  } finally {
    kv.close();
  }
});

/** A replay sleep that never ends by itself: the stream stalls after its first delta. */
function stallingSleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((_, reject) => {
    if (signal?.aborted) reject(signal.reason);
    signal?.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
}

Deno.test("with SLUICE_ON_DISCONNECT=abort, a client that leaves mid-answer aborts the upstream and stores nothing", async (t) => {
  const { app, kv, chat, signals, stats } = await chatApp({
    env: { SLUICE_ON_DISCONNECT: "abort" },
    pace: { ttftMs: 0, tokensPerSecond: 1, speed: 1 },
    sleep: stallingSleep,
  });
  try {
    const created = await (await app.request("/conversations", { method: "POST" })).json();
    const response = await chat({ message: "Tell me about sluice", conversation_id: created.id }, {
      accept: "text/event-stream",
    });
    const reader = response.body!.getReader();
    let seen = "";
    while (!seen.includes("event: text")) {
      const { value, done } = await reader.read();
      assert.equal(done, false);
      seen += new TextDecoder().decode(value);
    }

    await t.step("cancelling the response aborts the upstream request", async () => {
      assert.equal(signals.length, 1);
      assert.equal(signals[0].aborted, false);
      await reader.cancel();
      assert.equal(signals[0].aborted, true);
    });

    await t.step("the request is recorded as client_aborted", async () => {
      await eventually(() => stats.records.length === 1, "the stats record");
      assert.equal(stats.records[0].outcome, "client_aborted");
      assert.equal(stats.records[0].endpoint, "/chat");
    });

    await t.step("the half answer is not stored in the conversation", async () => {
      const conversation = await (await app.request(`/conversations/${created.id}`)).json();
      assert.deepEqual(conversation.messages, []);
    });
  } finally {
    kv.close();
  }
});

Deno.test("/chat's SSE view passes the tap's keep-alives on while the upstream is silent", async () => {
  const { kv, chat } = await chatApp({
    // The stream stalls for ever: the test's cancel must end it, not leave it to be finished.
    env: { SLUICE_ON_DISCONNECT: "abort" },
    pace: { ttftMs: 0, tokensPerSecond: 1, speed: 1 },
    sleep: stallingSleep,
    keepAliveMs: 5,
  });
  try {
    const response = await chat({ message: "Tell me about sluice" }, {
      accept: "text/event-stream",
    });
    const reader = response.body!.getReader();
    let seen = "";
    while (!seen.includes(": keep-alive\n\n")) {
      const { value, done } = await reader.read();
      assert.equal(done, false);
      seen += new TextDecoder().decode(value);
    }
    await reader.cancel();
    // The comment came after the text so far, between events.
    assert.match(seen, /event: text\ndata: .*\n\n: keep-alive\n\n$/s);
  } finally {
    kv.close();
  }
});

Deno.test("/chat with a conversation sends the history and stores complete exchanges", async (t) => {
  const { app, kv, chat, sent } = await chatApp();
  try {
    const created = await app.request("/conversations", {
      method: "POST",
      body: JSON.stringify({ system: "Answer in three words." }),
    });
    assert.equal(created.status, 201);
    const { id } = await created.json();
    const threeWords = (await expected("three-words")).text;

    await t.step("the first message goes up alone, with the conversation's system", async () => {
      const response = await chat({ message: "a three word story", conversation_id: id });
      assert.equal(response.headers.get("x-sluice-conversation-id"), id);
      assert.equal(await response.text(), `${threeWords}\n`);
      assert.deepEqual(sent.at(-1)!.messages, [{ role: "user", content: "a three word story" }]);
      assert.equal(sent.at(-1)!.system, "Answer in three words.");
    });

    await t.step("the second message goes up after the stored exchange", async () => {
      const response = await chat({ message: "another three word one", conversation_id: id }, {
        accept: "text/event-stream",
      });
      const done = chatEvents(await response.text()).at(-1)!;
      assert.equal(done.event, "done");
      assert.equal(done.data.conversation_id, id);
      assert.equal(done.data.stored, true);
      assert.deepEqual(sent.at(-1)!.messages, [
        { role: "user", content: "a three word story" },
        { role: "assistant", content: threeWords },
        { role: "user", content: "another three word one" },
      ]);
    });

    await t.step("a failed answer leaves the conversation as it was", async () => {
      const body =
        await (await chat({ message: "[fixture:overloaded-mid-stream]", conversation_id: id }))
          .text();
      assert.match(body, /\[sluice error\] overloaded_error/);
      const conversation = await (await app.request(`/conversations/${id}`)).json();
      assert.equal(conversation.messages.length, 4);
      assert.deepEqual(conversation.messages.at(-1), { role: "assistant", content: threeWords });
    });

    await t.step("stream false stores its exchange too", async () => {
      const body = await (await chat({
        message: "three word again",
        conversation_id: id,
        stream: false,
      })).json();
      assert.equal(body.stored, true);
      const conversation = await (await app.request(`/conversations/${id}`)).json();
      assert.equal(conversation.messages.length, 6);
    });

    await t.step("an unknown conversation is a 404 and nothing goes upstream", async () => {
      const before = sent.length;
      const response = await chat({
        message: "hi",
        conversation_id: "conv_00000000000000000000000000000000",
      });
      assert.equal(response.status, 404);
      assert.equal((await response.json()).error.type, "not_found_error");
      assert.equal(sent.length, before);
    });
  } finally {
    kv.close();
  }
});

Deno.test("a conversation belongs to the gateway key that made it", async () => {
  const { app, kv, chat } = await chatApp({ env: { SLUICE_API_KEYS: "key-alice,key-bob" } });
  try {
    const created = await app.request("/conversations", {
      method: "POST",
      headers: { authorization: "Bearer key-alice" },
    });
    const { id } = await created.json();
    const asBob = await chat({ message: "hi", conversation_id: id }, {
      authorization: "Bearer key-bob",
    });
    assert.equal(asBob.status, 404);
    await asBob.body?.cancel();
    const asAlice = await chat({ message: "three word", conversation_id: id }, {
      "x-api-key": "key-alice",
    });
    assert.equal(asAlice.status, 200);
    await asAlice.text();
    const noKey = await chat({ message: "hi" });
    assert.equal(noKey.status, 401);
    await noKey.body?.cancel();
  } finally {
    kv.close();
  }
});

Deno.test("chat request helpers", async (t) => {
  await t.step("Accept picks SSE only when it names text/event-stream", () => {
    assert.equal(chatFormat("text/event-stream"), "sse");
    assert.equal(chatFormat("application/json, text/event-stream;q=0.9"), "sse");
    assert.equal(chatFormat("*/*"), "text");
    assert.equal(chatFormat(undefined), "text");
    assert.equal(chatFormat("text/plain"), "text");
  });
  await t.step("the stats flag is on for ?stats, ?stats=1, ?stats=true, off for 0/false", () => {
    assert.equal(statsRequested(""), true);
    assert.equal(statsRequested("1"), true);
    assert.equal(statsRequested("true"), true);
    assert.equal(statsRequested("0"), false);
    assert.equal(statsRequested("false"), false);
    assert.equal(statsRequested(undefined), false);
  });
  await t.step(
    "a stored conversation's model and system apply unless the request sets them",
    () => {
      const defaults = {
        model: "default-model",
        maxTokens: 100,
        system: "stored system",
        conversationModel: "stored-model",
      };
      const history = [{ role: "user" as const, content: "a" }, {
        role: "assistant" as const,
        content: "b",
      }];
      const built = buildMessagesBody(parseChatBody('{"message":"c"}'), defaults, history);
      assert.equal(built.model, "stored-model");
      assert.equal(built.system, "stored system");
      assert.deepEqual(built.messages, [...history, { role: "user", content: "c" }]);
      const overridden = buildMessagesBody(
        parseChatBody('{"message":"c","model":"m","system":"s"}'),
        defaults,
        history,
      );
      assert.equal(overridden.model, "m");
      assert.equal(overridden.system, "s");
    },
  );
  await t.step("parse errors are SluiceErrors with status 400", () => {
    assert.throws(
      () => parseChatBody("{"),
      (error) => error instanceof SluiceError && error.status === 400,
    );
  });
});

Deno.test("the chat page is served at / without a key, locked to its own origin", async (t) => {
  const { app, kv } = await chatApp({ env: { SLUICE_API_KEYS: "secret-key" } });
  try {
    await t.step("GET / is the page, public even when keys are required", async () => {
      const response = await app.request("/");
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("content-type"), "text/html; charset=utf-8");
      const html = await response.text();
      assert.match(html, /<label for="prompt"/);
      assert.match(html, /src="\/page\/chat\.js"/);
      const csp = response.headers.get("content-security-policy")!;
      assert.match(csp, /default-src 'none'/);
      assert.match(csp, /connect-src 'self'/);
    });

    await t.step("its script and style are served, and nothing else under /page", async () => {
      const js = await app.request("/page/chat.js");
      assert.equal(js.status, 200);
      assert.equal(js.headers.get("content-type"), "text/javascript; charset=utf-8");
      assert.match(await js.text(), /fetch\("\/chat"/);
      for (const name of pageAssetNames) {
        const asset = await app.request(name === "index.html" ? "/" : `/page/${name}`);
        assert.equal(asset.status, 200, name);
        await asset.body?.cancel();
      }
      const css = await app.request("/page/chat.css");
      assert.equal(css.headers.get("content-type"), "text/css; charset=utf-8");
      await css.body?.cancel();
      const other = await app.request("/page/../deno.json");
      assert.notEqual(other.status, 200);
      await other.body?.cancel();
    });

    await t.step("an unchanged page revalidates with 304", async () => {
      const first = await app.request("/");
      await first.body?.cancel();
      const etag = first.headers.get("etag")!;
      assert.ok(etag);
      const again = await app.request("/", { headers: { "if-none-match": etag } });
      assert.equal(again.status, 304);
    });

    await t.step("the page's files reference no other origin", async () => {
      // The bundled libraries (vendor.*) name URLs in licences and XML namespaces; that they fetch
      // nothing is browser_test.ts's last step.
      for (const name of pageAssetNames.filter((name) => !name.startsWith("vendor."))) {
        const text = await Deno.readTextFile(new URL(`../lib/page/${name}`, import.meta.url));
        // A namespace inside the inline SVG icon is not a request; anything else would be.
        const urls = (text.match(/https?:\/\/[^\s"'<>)]+/g) ?? [])
          .filter((url) => url !== "http://www.w3.org/2000/svg");
        assert.deepEqual(urls, [], name);
      }
    });

    await t.step("the API behind it still needs the key", async () => {
      const response = await app.request("/chat", { method: "POST", body: '{"message":"hi"}' });
      assert.equal(response.status, 401);
      await response.body?.cancel();
    });
  } finally {
    kv.close();
  }
});
