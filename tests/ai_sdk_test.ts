/**
 * The Vercel AI SDK (`ai` with `@ai-sdk/anthropic`, pinned in deno.json) through sluice:
 * `streamText` and `generateText` in replay mode with no key, and in live mode compared with the
 * same calls made directly against the fake upstream.
 */
import { createAnthropic } from "@ai-sdk/anthropic";
import { generateText, streamText } from "ai";
import assert from "node:assert/strict";
import {
  liveApp,
  readFixture,
  replayApp,
  sdkOracle,
  serveOnLoopback,
  splitEvery,
  startFixtureUpstream,
  TEST_SERVER_KEY,
} from "./helpers.ts";
import { ownConnections } from "./helpers.ts";

/** `streamText` (its text stream's parts) and `generateText` against `baseUrl`. */
async function aiSdkCalls(
  baseUrl: string,
  model: string,
  fetch: typeof globalThis.fetch,
  headers: Record<string, string> = {},
) {
  const anthropic = createAnthropic({
    fetch,
    baseURL: `${baseUrl}/v1`,
    apiKey: "sk-ant-caller-key-ai-sdk",
    headers,
  });
  const prompt = "Write me a 3 word sentence";
  const options = { prompt, maxOutputTokens: 100, maxRetries: 0 };
  const streamed = streamText({ model: anthropic(model), ...options });
  const parts: string[] = [];
  for await (const part of streamed.textStream) parts.push(part);
  const generated = await generateText({ model: anthropic(model), ...options });
  return {
    parts,
    streamedText: await streamed.text,
    finishReason: await streamed.finishReason,
    generatedText: generated.text,
  };
}

/** A fixture's text, as the official SDK reads it. */
async function fixtureText(name: string): Promise<string> {
  const oracle = await sdkOracle(splitEvery(await readFixture(`${name}.sse`), 97));
  const message = oracle.finalMessage as { content: { type: string; text?: string }[] };
  return message.content.filter((b) => b.type === "text").map((b) => b.text).join("");
}

Deno.test("the AI SDK's streamText and generateText get the replayed answer from sluice with no key", async () => {
  const sluice = serveOnLoopback(await replayApp());
  const http = ownConnections();
  try {
    const calls = await aiSdkCalls(sluice.url, "claude-haiku-4-5", http.fetch, {
      "x-sluice-fixture": "three-words",
    });
    const expected = await fixtureText("three-words");
    assert.ok(expected.length > 0);
    assert.equal(calls.parts.join(""), expected);
    assert.equal(calls.streamedText, expected);
    assert.equal(calls.generatedText, expected);
  } finally {
    http.close();
    await sluice.close();
  }
});

Deno.test("the AI SDK gets through sluice what it gets from the upstream directly", async () => {
  const upstream = startFixtureUpstream();
  const sluice = serveOnLoopback(liveApp(upstream.url));
  const http = ownConnections();
  try {
    const direct = await aiSdkCalls(upstream.url, "fixture/three-words", http.fetch);
    const directCount = upstream.requests.length;
    const proxied = await aiSdkCalls(sluice.url, "fixture/three-words", http.fetch);
    assert.ok(direct.parts.length > 1, "the fixture streams more than one part");
    assert.deepEqual(proxied, direct);
    const viaSluice = upstream.requests.slice(directCount);
    assert.equal(viaSluice.length, 2);
    for (const seen of viaSluice) assert.equal(seen.headers.get("x-api-key"), TEST_SERVER_KEY);
  } finally {
    http.close();
    await sluice.close();
    await upstream.close();
  }
});
