/**
 * The official Python SDK (pip `anthropic`, in the virtualenv .ci/install_clients makes) through
 * sluice in live mode, compared with the same calls made directly against the fake upstream.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { liveApp, serveOnLoopback, startFixtureUpstream, TEST_SERVER_KEY } from "./helpers.ts";
import { requireTool, runClient } from "./client_tools.ts";

const SCRIPT = fileURLToPath(new URL("./clients/python_sdk.py", import.meta.url));

/** Runs tests/clients/python_sdk.py against `baseUrl` and parses what it printed. */
async function pythonCalls(baseUrl: string) {
  const run = await runClient(requireTool("python"), {
    args: [SCRIPT, baseUrl],
    env: { PYTHONDONTWRITEBYTECODE: "1" },
  });
  assert.equal(run.code, 0, `python exited ${run.code}: ${run.stderr}`);
  return JSON.parse(run.stdout);
}

Deno.test("the Python SDK's stream, tool call and create through sluice equal the same calls made directly", async (t) => {
  const upstream = startFixtureUpstream();
  const sluice = serveOnLoopback(liveApp(upstream.url));
  try {
    const direct = await pythonCalls(upstream.url);
    const proxied = await pythonCalls(sluice.url);

    await t.step("the second run's calls went through sluice (with sluice's key)", () => {
      const keys = upstream.requests.map((r) => r.headers.get("x-api-key"));
      assert.equal(keys.length, 6);
      assert.deepEqual(keys.slice(3), Array(3).fill(TEST_SERVER_KEY));
    });

    await t.step(
      "text_stream yields the same deltas, and get_final_message the same message",
      () => {
        assert.ok(direct.text_stream.length > 1, "the fixture streams more than one delta");
        assert.deepEqual(proxied.text_stream, direct.text_stream);
        assert.deepEqual(proxied.final_message, direct.final_message);
      },
    );

    await t.step("a streamed tool call arrives with the same name and input", () => {
      assert.ok(direct.tool_uses.length > 0, "the fixture has a tool call");
      assert.deepEqual(proxied.tool_uses, direct.tool_uses);
      assert.deepEqual(proxied.tool_message, direct.tool_message);
    });

    await t.step("messages.create returns the same message", () => {
      assert.ok(direct.create.content.length > 0);
      assert.deepEqual(proxied.create, direct.create);
    });
  } finally {
    await sluice.close();
    await upstream.close();
  }
});
