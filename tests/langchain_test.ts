/**
 * LangChain JS (`@langchain/anthropic`'s `ChatAnthropic`, pinned in deno.json) through sluice in
 * live mode: `.stream()` and `.invoke()` give what they give against the fake upstream directly.
 */
import { ChatAnthropic } from "@langchain/anthropic";
import assert from "node:assert/strict";
import { liveApp, serveOnLoopback, startFixtureUpstream, TEST_SERVER_KEY } from "./helpers.ts";
import { ownConnections } from "./helpers.ts";

/** `.stream()` (each chunk's text) and `.invoke()` (the message's text) against `baseUrl`. */
async function langchainCalls(baseUrl: string, fetch: typeof globalThis.fetch) {
  const model = new ChatAnthropic({
    clientOptions: { fetch },
    model: "fixture/three-words",
    apiKey: "sk-ant-caller-key-langchain",
    anthropicApiUrl: baseUrl,
    maxRetries: 0,
    maxTokens: 100,
  });
  const prompt = "Write me a 3 word sentence";
  const chunks: string[] = [];
  for await (const chunk of await model.stream(prompt)) chunks.push(chunk.text);
  const invoked = await model.invoke(prompt);
  return {
    chunks,
    invokedText: invoked.text,
    stopReason: invoked.response_metadata?.stop_reason,
    usage: invoked.usage_metadata,
  };
}

Deno.test("LangChain's ChatAnthropic streams and invokes through sluice as it does directly", async () => {
  const upstream = startFixtureUpstream();
  const sluice = serveOnLoopback(liveApp(upstream.url));
  const http = ownConnections();
  try {
    const direct = await langchainCalls(upstream.url, http.fetch);
    const directCount = upstream.requests.length;
    const proxied = await langchainCalls(sluice.url, http.fetch);
    assert.ok(direct.chunks.join("").length > 0, "the stream had text");
    assert.ok(direct.invokedText.length > 0, "invoke had text");
    assert.deepEqual(proxied, direct);
    const viaSluice = upstream.requests.slice(directCount);
    assert.ok(viaSluice.length >= 2);
    for (const seen of viaSluice) assert.equal(seen.headers.get("x-api-key"), TEST_SERVER_KEY);
  } finally {
    http.close();
    await sluice.close();
    await upstream.close();
  }
});
