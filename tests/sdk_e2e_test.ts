/**
 * The official SDK against a real sluice on 127.0.0.1, in live mode, in front of a fake upstream
 * on 127.0.0.1: by changing only `baseURL`, it must get the same events and messages as it gets
 * from the upstream directly.
 */
import Anthropic from "@anthropic-ai/sdk";
import assert from "node:assert/strict";
import { clean, liveApp, serveOnLoopback, startFixtureUpstream } from "./helpers.ts";

/** A fake upstream that serves the fixture named by the request's model: `fixture/NAME`. */
const fixtureUpstream = () => startFixtureUpstream();

function startSluice(upstreamUrl: string) {
  return serveOnLoopback(liveApp(upstreamUrl));
}

const sdk = (baseURL: string) => new Anthropic({ apiKey: "caller-key", baseURL, maxRetries: 0 });

async function streamThrough(client: Anthropic, fixture: string) {
  const stream = client.messages.stream({
    model: `fixture/${fixture}`,
    max_tokens: 100,
    messages: [{ role: "user", content: "hi" }],
  });
  const events: unknown[] = [];
  let error: string | null = null;
  stream.on("error", (e) => (error = `${(e as { type?: string }).type ?? ""}:${e.message}`));
  try {
    for await (const event of stream) events.push(clean(event));
  } catch {
    // the error listener has it
  }
  let message: unknown = null;
  try {
    message = clean(await stream.finalMessage());
  } catch {
    message = null;
  }
  return { events, message, error };
}

Deno.test("the official SDK streams through sluice exactly as it streams from the upstream", async (t) => {
  const upstream = await fixtureUpstream();
  const sluice = startSluice(upstream.url);
  try {
    for (
      const name of [
        "three-words",
        "essay",
        "tool-use-split",
        "thinking",
        "web-search",
        "overloaded-mid-stream",
        "multibyte",
      ]
    ) {
      await t.step(name, async () => {
        const direct = await streamThrough(sdk(upstream.url), name);
        const through = await streamThrough(sdk(sluice.url), name);
        assert.ok(direct.events.length > 0);
        assert.deepEqual(through, direct);
      });
    }
  } finally {
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("a stream the upstream closes without message_stop makes the official SDK raise an error through sluice", async () => {
  const upstream = await fixtureUpstream();
  const sluice = startSluice(upstream.url);
  try {
    const direct = await streamThrough(sdk(upstream.url), "connection-cut");
    const through = await streamThrough(sdk(sluice.url), "connection-cut");
    // The same events up to the cut; then sluice's error event, where the upstream alone ends
    // silently and the SDK would hand over a truncated message as if it were whole.
    assert.ok(direct.events.length > 0);
    assert.deepEqual(through.events, direct.events);
    assert.equal(direct.error, null);
    assert.notEqual(through.error, null);
    assert.equal(through.message, null);
  } finally {
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("the official SDK gets the same non-streaming message through sluice", async () => {
  const upstream = await fixtureUpstream();
  const sluice = startSluice(upstream.url);
  try {
    const params = {
      model: "fixture/essay",
      max_tokens: 100,
      messages: [{ role: "user" as const, content: "hi" }],
    };
    const direct = await sdk(upstream.url).messages.create(params);
    const through = await sdk(sluice.url).messages.create(params);
    assert.deepEqual(clean(through), clean(direct));
    assert.equal(through._request_id, "req_fake_json");
  } finally {
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("the official SDK raises the same error class, status and request id through sluice", async () => {
  const upstream = await fixtureUpstream();
  const sluice = startSluice(upstream.url);
  try {
    const params = {
      model: "fixture/rate-limited",
      max_tokens: 100,
      messages: [{ role: "user" as const, content: "hi" }],
      stream: true as const,
    };
    const errorOf = async (url: string) => {
      try {
        await sdk(url).messages.create(params);
      } catch (error) {
        const e = error as InstanceType<typeof Anthropic.APIError>;
        return { name: e.constructor.name, status: e.status, type: e.type, id: e.requestID };
      }
      assert.fail("expected an error");
    };
    const direct = await errorOf(upstream.url);
    assert.equal(direct.name, "RateLimitError");
    assert.deepEqual(await errorOf(sluice.url), direct);
  } finally {
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("the fake upstream sees sluice's server key, never the caller's", async () => {
  const upstream = await fixtureUpstream();
  const sluice = startSluice(upstream.url);
  try {
    await sdk(sluice.url).messages.create({
      model: "fixture/three-words",
      max_tokens: 10,
      messages: [{ role: "user", content: "hi" }],
    });
    const seen = upstream.requests.at(-1)!;
    assert.equal(seen.headers.get("authorization"), "Bearer sk-ant-test-upstream-key");
    assert.ok(![...seen.headers.values()].some((v) => v.includes("caller-key")));
  } finally {
    await sluice.close();
    await upstream.close();
  }
});
