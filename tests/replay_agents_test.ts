/**
 * Agent loops against replay, through a real sluice on 127.0.0.1 with the official SDK: a tool
 * call is answered with a tool result, and replay's answer to that ends the loop with text.
 */
import Anthropic from "@anthropic-ai/sdk";
import { betaTool } from "@anthropic-ai/sdk/helpers/beta/json-schema";
import assert from "node:assert/strict";
import { replayApp, serveOnLoopback } from "./helpers.ts";

const MODEL = "claude-haiku-4-5";
const MAX_STEPS = 5;

const weatherTool = {
  name: "get_weather",
  description: "The current weather in a city",
  input_schema: {
    type: "object" as const,
    properties: { city: { type: "string" } },
    required: ["city"],
  },
};

async function withSluice(fn: (client: Anthropic) => Promise<void>) {
  const sluice = serveOnLoopback(await replayApp());
  try {
    await fn(new Anthropic({ apiKey: "caller", baseURL: sluice.url, maxRetries: 0 }));
  } finally {
    await sluice.close();
  }
}

const textOf = (message: Anthropic.Message) =>
  message.content.map((block) => (block.type === "text" ? block.text : "")).join("");

Deno.test("a hand-written tool loop with messages.create ends with a final text answer quoting the result", async (t) => {
  for (const stream of [false, true]) {
    await t.step(stream ? "streamed (messages.stream)" : "messages.create", async () => {
      await withSluice(async (client) => {
        const messages: Anthropic.MessageParam[] = [
          { role: "user", content: "What's the weather in Lisbon?" },
        ];
        const calls: unknown[] = [];
        let last: Anthropic.Message | undefined;
        let steps = 0;
        while (steps < MAX_STEPS) {
          steps++;
          const params = { model: MODEL, max_tokens: 1024, tools: [weatherTool], messages };
          last = stream
            ? await client.messages.stream(params).finalMessage()
            : await client.messages.create(params);
          messages.push({ role: "assistant", content: last.content });
          if (last.stop_reason !== "tool_use") break;
          const results: Anthropic.ToolResultBlockParam[] = [];
          for (const block of last.content) {
            if (block.type !== "tool_use") continue;
            calls.push(block.input);
            results.push({
              type: "tool_result",
              tool_use_id: block.id,
              content: "21°C, clear skies",
            });
          }
          messages.push({ role: "user", content: results });
        }
        assert.equal(last!.stop_reason, "end_turn");
        assert.equal(steps, 2, "one tool call, then the answer");
        assert.equal(calls.length, 1);
        assert.match(textOf(last!), /get_weather tool returned: 21°C, clear skies/);
        assert.equal(last!.model, MODEL);
      });
    });
  }
});

Deno.test("the SDK's tool runner ends with a final text answer", async () => {
  await withSluice(async (client) => {
    const ran: unknown[] = [];
    const runner = client.beta.messages.toolRunner({
      model: MODEL,
      max_tokens: 1024,
      max_iterations: MAX_STEPS,
      messages: [{ role: "user", content: "What's the weather in Lisbon?" }],
      tools: [
        betaTool({
          name: "get_weather",
          description: "The current weather in a city",
          inputSchema: {
            type: "object",
            properties: { city: { type: "string" } },
            required: ["city"],
          },
          run: (input) => {
            ran.push(input);
            return "21°C, clear skies";
          },
        }),
      ],
    });
    let turns = 0;
    for await (const _message of runner) turns++;
    const final = await runner.done();
    assert.equal(final.stop_reason, "end_turn");
    assert.equal(ran.length, 1, "the tool ran once");
    assert.ok(turns <= MAX_STEPS, `${turns} turns`);
    const text = final.content.map((b) => (b.type === "text" ? b.text : "")).join("");
    assert.match(text, /returned: 21°C, clear skies/);
  });
});

Deno.test("a request with tools no recording calls (Claude Code's) gets a text answer that ends the turn", async () => {
  const names = [
    "Task",
    "Bash",
    "Glob",
    "Grep",
    "Read",
    "Edit",
    "Write",
    "NotebookEdit",
    "WebFetch",
    "TodoWrite",
    "WebSearch",
    "BashOutput",
  ];
  await withSluice(async (client) => {
    const message = await client.messages.stream({
      model: MODEL,
      max_tokens: 32000,
      system: [{ type: "text", text: "You are Claude Code." }],
      tools: names.map((name) => ({
        name,
        description: name,
        input_schema: { type: "object" as const, properties: {} },
      })),
      messages: [{ role: "user", content: [{ type: "text", text: "list the files here" }] }],
    }).finalMessage();
    assert.equal(message.stop_reason, "end_turn");
    assert.deepEqual(message.content.map((b) => b.type), ["text"]);
  });
});
