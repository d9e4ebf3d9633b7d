/**
 * `POST /v1/chat/completions` in replay mode, through the real `openai` SDK with no key: the
 * fixtures come back as `chat.completion.chunk` streams and `chat.completion` bodies whose text,
 * tool calls, finish reasons and usage are those the fixtures hold.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { finishReason } from "../lib/openai/replay.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { projectFixtures, replayApp, serveOnLoopback, testConfig } from "./helpers.ts";
import { openaiClient } from "./openai_support.ts";

const MODEL = "claude-haiku-4-5";

/** What a fixture's stream holds, by the project's own accumulator. */
async function fixtureMessage(name: string) {
  const fixture = (await projectFixtures()).fixtures.get(name)!;
  const accumulator = new EventAccumulator();
  for (const event of decodeAll(fixture.sse!)) accumulator.push(event);
  const result = accumulator.end();
  const message = result.message as unknown as {
    content: { type: string; text?: string; id?: string; name?: string; input?: unknown }[];
    stop_reason: string | null;
    usage: Record<string, number>;
  } | null;
  return {
    result,
    message,
    text: message?.content.filter((b) => b.type === "text").map((b) => b.text).join("") ?? "",
    tools: message?.content.filter((b) => b.type === "tool_use") ?? [],
    promptTokens: message
      ? message.usage.input_tokens + (message.usage.cache_creation_input_tokens ?? 0) +
        (message.usage.cache_read_input_tokens ?? 0)
      : 0,
  };
}

/** sluice on replay, served on loopback, with an OpenAI client pointed at it. */
async function replaySluice() {
  const stats = memorySink();
  const sluice = serveOnLoopback(await replayApp({ stats }));
  const { client, close } = openaiClient(sluice.url, "anything");
  const server = {
    close: async () => {
      close();
      await sluice.close();
    },
  };
  return { server, client, stats };
}

/** A client that asks for one fixture by name (sluice's `x-sluice-fixture`). */
function withFixture(client: OpenAI, name: string): OpenAI {
  return client.withOptions({ defaultHeaders: { "x-sluice-fixture": name } });
}

async function eventually(predicate: () => boolean, what: string) {
  for (let i = 0; i < 200 && !predicate(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(predicate(), `timed out waiting for ${what}`);
}

Deno.test("the OpenAI SDK streams a replayed answer whose deltas join to the fixture's text", async (t) => {
  const { server, client, stats } = await replaySluice();
  try {
    const expected = await fixtureMessage("three-words");
    await t.step("with include_usage, a last chunk carries the fixture's usage", async () => {
      const stream = await client.chat.completions.create({
        model: MODEL,
        stream: true,
        stream_options: { include_usage: true },
        messages: [{ role: "user", content: "Write me a 3 word sentence" }],
      });
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
      assert.equal(text, expected.text);
      assert.ok(chunks.filter((c) => c.choices[0]?.delta.content).length > 1, "several deltas");
      assert.ok(chunks.every((c) => c.object === "chat.completion.chunk" && c.model === MODEL));
      assert.equal(chunks[0].choices[0].delta.role, "assistant");
      const finish = chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean);
      assert.deepEqual(finish, ["stop"]);
      const last = chunks.at(-1)!;
      assert.deepEqual(last.choices, []);
      assert.deepEqual(last.usage, {
        prompt_tokens: expected.promptTokens,
        completion_tokens: expected.message!.usage.output_tokens,
        total_tokens: expected.promptTokens + expected.message!.usage.output_tokens,
      });
    });
    await t.step("without it, no chunk carries usage", async () => {
      const stream = await client.chat.completions.create({
        model: MODEL,
        stream: true,
        messages: [{ role: "user", content: "Write me a 3 word sentence" }],
      });
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      assert.equal(chunks.map((c) => c.choices[0]?.delta.content ?? "").join(""), expected.text);
      assert.ok(chunks.every((c) => !c.usage));
    });
    await t.step("each is recorded as a /v1/chat/completions request", async () => {
      await eventually(() => stats.records.length === 2, "two stats records");
      const [withUsage, without] = stats.records;
      for (const record of [withUsage, without]) {
        assert.equal(record.endpoint, "/v1/chat/completions");
        assert.equal(record.streaming, true);
        assert.equal(record.outcome, "ok");
        assert.equal(record.model, MODEL);
        assert.equal(record.stopReason, "stop");
        assert.equal(typeof record.ttftMs, "number");
        assert.equal(record.events.done, 1);
      }
      assert.equal(withUsage.usage.input_tokens, expected.promptTokens);
      assert.equal(withUsage.usage.output_tokens, expected.message!.usage.output_tokens);
      assert.equal(without.usage.output_tokens, 0, "no usage chunk, nothing invented");
    });
  } finally {
    await server.close();
  }
});

Deno.test("a replayed chat.completion holds the fixture's text, finish reason and usage", async () => {
  const { server, client } = await replaySluice();
  try {
    for (
      // Picked by the prompt, as an ordinary request is; and asked for by name.
      const [name, ask, maxTokens, sdk] of [
        ["three-words", "Write me a 3 word sentence", 1024, client],
        ["essay-max-tokens", "Write an essay", 500, withFixture(client, "essay-max-tokens")],
      ] as const
    ) {
      const expected = await fixtureMessage(name);
      const completion = await sdk.chat.completions.create({
        model: MODEL,
        max_completion_tokens: maxTokens,
        messages: [{ role: "system", content: "Be brief." }, { role: "user", content: ask }],
      });
      assert.equal(completion.object, "chat.completion", name);
      assert.equal(completion.model, MODEL);
      assert.equal(completion.choices.length, 1);
      assert.equal(completion.choices[0].message.role, "assistant");
      assert.equal(completion.choices[0].message.content, expected.text, name);
      assert.equal(
        completion.choices[0].finish_reason,
        finishReason(expected.message!.stop_reason),
      );
      assert.equal(completion.usage?.completion_tokens, expected.message!.usage.output_tokens);
      assert.equal(completion.usage?.prompt_tokens, expected.promptTokens);
    }
  } finally {
    await server.close();
  }
});

Deno.test("a replayed tool call comes through as tool_calls, streamed and not", async (t) => {
  const { server, client } = await replaySluice();
  const expected = await fixtureMessage("tool-use-split");
  const [tool] = expected.tools;
  const params = {
    model: MODEL,
    messages: [{ role: "user" as const, content: "What is the weather in São Paulo?" }],
    tools: [{
      type: "function" as const,
      function: { name: "get_weather", parameters: { type: "object", properties: {} } },
    }],
  };
  try {
    assert.ok(tool, "the fixture has a tool call");
    await t.step("streamed: the SDK's stream helper assembles the call", async () => {
      const stream = client.chat.completions.stream(params);
      const argumentDeltas: string[] = [];
      for await (const chunk of stream) {
        const call = chunk.choices[0]?.delta.tool_calls?.[0];
        if (call?.function?.arguments) argumentDeltas.push(call.function.arguments);
      }
      assert.ok(argumentDeltas.length > 1, "the arguments arrive in pieces");
      const final = await stream.finalChatCompletion();
      const choice = final.choices[0];
      assert.equal(choice.finish_reason, "tool_calls");
      assert.equal(choice.message.content, expected.text);
      assert.equal(choice.message.tool_calls?.length, 1);
      const call = choice.message.tool_calls![0];
      assert.equal(call.type, "function");
      if (call.type !== "function") return;
      assert.equal(call.id, tool.id);
      assert.equal(call.function.name, tool.name);
      assert.deepEqual(JSON.parse(call.function.arguments), tool.input);
    });
    await t.step("the tool's result sent back ends the loop with a text answer", async () => {
      const completion = await client.chat.completions.create({
        ...params,
        messages: [
          ...params.messages,
          {
            role: "assistant",
            content: null,
            tool_calls: [{
              id: tool.id!,
              type: "function",
              function: { name: tool.name!, arguments: JSON.stringify(tool.input) },
            }],
          },
          { role: "tool", tool_call_id: tool.id!, content: "21 degrees and sunny" },
        ],
      });
      const choice = completion.choices[0];
      assert.equal(choice.finish_reason, "stop");
      assert.equal(choice.message.tool_calls, undefined);
      assert.match(choice.message.content ?? "", /get_weather tool returned: 21 degrees and sunny/);
    });
    await t.step("not streamed: the call's arguments are its input as JSON", async () => {
      const completion = await client.chat.completions.create(params);
      const choice = completion.choices[0];
      assert.equal(choice.finish_reason, "tool_calls");
      const call = choice.message.tool_calls![0];
      assert.equal(call.type, "function");
      if (call.type !== "function") return;
      assert.equal(call.id, tool.id);
      assert.deepEqual(JSON.parse(call.function.arguments), tool.input);
    });
  } finally {
    await server.close();
  }
});

Deno.test("every streamed fixture reaches the OpenAI SDK as text, a tool call or an API error", async (t) => {
  const { server, client } = await replaySluice();
  const set = await projectFixtures();
  try {
    for (const fixture of set.fixtures.values()) {
      if (!fixture.sse) continue;
      await t.step(fixture.name, async () => {
        const expected = await fixtureMessage(fixture.name);
        const stream = await withFixture(client, fixture.name).chat.completions.create({
          model: MODEL,
          stream: true,
          messages: [{ role: "user", content: "hello" }],
        });
        let text = "";
        const finish: string[] = [];
        const toolIds = new Set<string>();
        let error: unknown = null;
        try {
          for await (const chunk of stream) {
            text += chunk.choices[0]?.delta.content ?? "";
            const reason = chunk.choices[0]?.finish_reason;
            if (reason) finish.push(reason);
            for (const call of chunk.choices[0]?.delta.tool_calls ?? []) {
              if (call.id) toolIds.add(call.id);
            }
          }
        } catch (e) {
          error = e;
        }
        assert.equal(text, expected.text, "the text of the fixture's text blocks");
        assert.deepEqual([...toolIds], expected.tools.map((b) => b.id));
        if (expected.result.error) {
          assert.ok(error instanceof OpenAI.APIError, `an APIError, got ${error}`);
          assert.equal(error.message, expected.result.error.message);
          assert.equal(error.type, expected.result.error.type);
        } else if (!expected.result.complete) {
          // Replay ends a stream cut inside an event like a dropped connection: sluice says so.
          assert.ok(error instanceof OpenAI.APIError, `an APIError, got ${error}`);
          assert.match(error.message, /dropped mid-stream/);
        } else {
          assert.equal(error, null);
          const stopped = expected.message?.stop_reason;
          assert.deepEqual(finish, stopped ? [finishReason(stopped)] : []);
        }
      });
    }
  } finally {
    await server.close();
  }
});

Deno.test("a replayed HTTP error reaches the OpenAI SDK as its error class with the fixture's message", async () => {
  const { server, client } = await replaySluice();
  const set = await projectFixtures();
  try {
    const fixture = set.fixtures.get("rate-limited")!;
    const body = fixture.http!.body as { error: { type: string; message: string } };
    const error = await withFixture(client, "rate-limited").chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
    }).then(() => null, (e) => e);
    assert.ok(error instanceof OpenAI.RateLimitError, `a RateLimitError, got ${error}`);
    assert.equal(error.status, fixture.http!.status);
    assert.equal(error.type, body.error.type);
    assert.match(error.message, new RegExp(body.error.message.slice(0, 40)));
    assert.equal(error.headers?.get("retry-after"), fixture.http!.headers["retry-after"]);
  } finally {
    await server.close();
  }
});

Deno.test("sluice refuses only bodies it cannot read, in OpenAI's error shape", async (t) => {
  const stats = memorySink();
  const app = await replayApp({ stats });
  const send = (body: string) =>
    app.request("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
  for (
    const [name, body, mentions] of [
      ["not JSON", "{nope", "not valid JSON"],
      ["an array", "[]", "expected object"],
      ["stream not a boolean", JSON.stringify({ stream: "yes", messages: [] }), "stream"],
      ["model not a string", JSON.stringify({ model: 5, messages: [] }), "model"],
    ]
  ) {
    await t.step(`${name}: 400`, async () => {
      const response = await send(body);
      assert.equal(response.status, 400);
      const json = await response.json();
      assert.deepEqual(Object.keys(json), ["error"]);
      assert.equal(json.error.type, "invalid_request_error");
      assert.equal(json.error.code, null);
      assert.ok(json.error.message.includes(mentions), json.error.message);
    });
  }
  await t.step("each refusal is recorded as invalid_request on this endpoint", async () => {
    await eventually(() => stats.records.length === 4, "four stats records");
    for (const record of stats.records) {
      assert.equal(record.endpoint, "/v1/chat/completions");
      assert.equal(record.outcome, "invalid_request");
      assert.equal(record.status, 400);
    }
  });
  await t.step("anything else, even fields sluice has never heard of, is answered", async () => {
    const response = await send(JSON.stringify({
      messages: [{ role: "developer", content: [{ type: "text", text: "hi" }] }],
      n: 1,
      some_future_parameter: { nested: true },
    }));
    assert.equal(response.status, 200);
    assert.equal((await response.json()).object, "chat.completion");
  });
  await t.step("gateway errors on this path have the same shape", async () => {
    const locked = await replayApp({ config: testConfig({ SLUICE_API_KEYS: "gw" }) });
    const response = await locked.request("/v1/chat/completions", { method: "POST", body: "{}" });
    assert.equal(response.status, 401);
    const json = await response.json();
    assert.equal(json.error.type, "authentication_error");
    assert.equal(json.type, undefined);
  });
});
