/**
 * Claude Code itself (npm `@anthropic-ai/claude-code`, pinned in .ci/install_clients) in print
 * mode, pointed at a real sluice by `ANTHROPIC_BASE_URL` only: the most used Anthropic client
 * must work through sluice as it works against the API. It runs with a throwaway HOME and working
 * folder, nonessential traffic off, and nothing else from the environment, so it reaches only
 * 127.0.0.1. What it sends (one `POST /v1/messages?beta=true` with eight betas and a ~49 KB body
 * holding a `role: "system"` message) is described in docs/clients.md.
 */
import assert from "node:assert/strict";
import { accumulate } from "./sdk_agreement.ts";
import {
  liveApp,
  readFixture,
  replayApp,
  serveOnLoopback,
  startFixtureUpstream,
  TEST_SERVER_KEY,
} from "./helpers.ts";
import { headerValues, requireTool, runClient, serveTapped, tempDir } from "./client_tools.ts";

const PROMPT = "Write me a 3 word sentence";

/** Runs `claude -p PROMPT` against `baseUrl` in a fresh HOME and working folder. */
async function askClaude(baseUrl: string) {
  const claude = requireTool("claude");
  const home = await tempDir("sluice-claude-home-");
  const work = await tempDir("sluice-claude-work-");
  try {
    return await runClient(claude, {
      args: ["-p", PROMPT],
      cwd: work.path,
      env: {
        HOME: home.path,
        ANTHROPIC_BASE_URL: baseUrl,
        ANTHROPIC_API_KEY: "sk-ant-caller-key-claude-code",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
      },
      timeoutMs: 60_000,
    });
  } finally {
    await home.remove();
    await work.remove();
  }
}

Deno.test("Claude Code in print mode gets the answer its prompt asks for from sluice in replay mode, with no key", async () => {
  const sluice = serveOnLoopback(await replayApp());
  try {
    const run = await askClaude(sluice.url);
    assert.equal(run.code, 0, `claude exited ${run.code}: ${run.stdout}${run.stderr}`);
    assert.doesNotMatch(run.stdout, /API Error/);
    // Its request enables adaptive thinking and holds the prompt in a user turn followed by a
    // system message: replay still reads the prompt and answers with the three-word recording.
    const expected = accumulate([await readFixture("three-words.sse")]).message!;
    const text = expected.content.map((b) => b.type === "text" ? b.text : "").join("");
    assert.equal(run.stdout.trim(), text.trim());
  } finally {
    await sluice.close();
  }
});

Deno.test("Claude Code prints through sluice what it prints from the upstream directly", async (t) => {
  // Claude Code picks its own model, so the fake answers every request with one fixture.
  const upstream = startFixtureUpstream({ fallback: "three-words" });
  const sluice = serveTapped(liveApp(upstream.url));
  try {
    const direct = await askClaude(upstream.url);
    const directRequests = upstream.requests.splice(0);
    const proxied = await askClaude(sluice.url);
    const proxiedRequests = upstream.requests.splice(0);

    await t.step("both runs exit 0 with the same, non-empty answer", () => {
      assert.equal(direct.code, 0, `direct: claude exited ${direct.code}: ${direct.stderr}`);
      assert.equal(proxied.code, 0, `via sluice: claude exited ${proxied.code}: ${proxied.stdout}`);
      assert.ok(direct.stdout.trim().length > 0);
      assert.equal(proxied.stdout, direct.stdout);
    });

    await t.step("every request reached the upstream with its path and query string", () => {
      assert.ok(sluice.received.length > 0);
      assert.deepEqual(
        proxiedRequests.map((r) => `${r.method} ${r.path}${r.search}`),
        sluice.received.map((r) => `${r.method} ${r.path}${r.search}`),
      );
      assert.ok(proxiedRequests.some((r) => r.search === "?beta=true"), "no ?beta=true upstream");
    });

    await t.step("every anthropic-beta value Claude Code sent reached the upstream", () => {
      assert.equal(proxiedRequests.length, sluice.received.length);
      for (const [i, sent] of sluice.received.entries()) {
        const betas = headerValues(sent.headers, "anthropic-beta");
        assert.ok(betas.length > 0, "Claude Code sent no betas");
        assert.deepEqual(headerValues(proxiedRequests[i].headers, "anthropic-beta"), betas);
      }
      // And the same set as when it talks to the upstream itself.
      assert.deepEqual(
        headerValues(proxiedRequests[0].headers, "anthropic-beta"),
        headerValues(directRequests[0].headers, "anthropic-beta"),
      );
    });

    await t.step("bodies reach the upstream byte for byte, with sluice's key instead", () => {
      assert.equal(proxiedRequests.length, sluice.received.length);
      for (const [i, sent] of sluice.received.entries()) {
        assert.equal(proxiedRequests[i].body, sent.body);
        assert.equal(proxiedRequests[i].headers.get("x-api-key"), TEST_SERVER_KEY);
        assert.equal(
          proxiedRequests[i].headers.get("anthropic-version"),
          sent.headers.get("anthropic-version"),
        );
      }
    });
  } finally {
    await sluice.close();
    await upstream.close();
  }
});
