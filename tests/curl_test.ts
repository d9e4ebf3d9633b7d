/**
 * curl, the README's first client: `curl -N` against a real sluice in replay mode (paced, as a
 * newcomer sees it) shows the answer's text as it is written, on `/chat` and on `/v1/messages`.
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import {
  projectFixtures,
  readFixture,
  sdkOracle,
  serveOnLoopback,
  splitEvery,
  testConfig,
} from "./helpers.ts";

/** sluice on replay at a reading pace: each text delta comes on its own, a few ms apart. */
async function pacedReplayApp() {
  return createApp({
    config: testConfig(),
    upstream: createUpstream({
      mode: "replay",
      apiKey: "replay",
      baseURL: "http://replay.test",
      maxRetries: 0,
      fetch: createReplayFetch(await projectFixtures(), {
        pace: { ttftMs: 0, tokensPerSecond: 400, speed: 1 },
      }),
    }),
    logger: silentLogger,
  });
}

/** Runs curl and collects each piece of its stdout as it comes. */
async function curlPieces(args: string[]): Promise<{ code: number; pieces: string[] }> {
  const child = new Deno.Command("curl", {
    args: ["-N", "-sS", ...args],
    clearEnv: true, // no proxy variables: only the loopback sluice
    env: { PATH: "/usr/local/bin:/usr/bin:/bin" },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const pieces: string[] = [];
  for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) pieces.push(text);
  return { code: (await child.status).code, pieces };
}

/** The essay fixture's text, as the official SDK reads it. */
async function essayText(): Promise<string> {
  const oracle = await sdkOracle(splitEvery(await readFixture("essay.sse"), 97));
  const message = oracle.finalMessage as { content: { type: string; text?: string }[] };
  return message.content.filter((b) => b.type === "text").map((b) => b.text).join("");
}

Deno.test("curl -N shows /chat's answer as plain text, piece by piece", async () => {
  const sluice = serveOnLoopback(await pacedReplayApp());
  try {
    const { code, pieces } = await curlPieces([
      `${sluice.url}/chat`,
      "-H",
      "x-sluice-fixture: essay",
      "-d",
      JSON.stringify({ message: "Write an essay about rivers" }),
    ]);
    assert.equal(code, 0);
    assert.ok(pieces.length > 1, `the answer came in ${pieces.length} piece(s), not as a stream`);
    assert.equal(pieces.join("").trimEnd(), (await essayText()).trimEnd());
  } finally {
    await sluice.close();
  }
});

Deno.test("curl -N shows /v1/messages' text deltas as server-sent events, piece by piece", async () => {
  const sluice = serveOnLoopback(await pacedReplayApp());
  try {
    const { code, pieces } = await curlPieces([
      `${sluice.url}/v1/messages`,
      "-H",
      "content-type: application/json",
      "-H",
      "anthropic-version: 2023-06-01",
      "-H",
      "x-sluice-fixture: essay",
      "-d",
      JSON.stringify({
        model: "claude-haiku-4-5",
        max_tokens: 1024,
        stream: true,
        messages: [{ role: "user", content: "Write an essay about rivers" }],
      }),
    ]);
    assert.equal(code, 0);
    assert.ok(pieces.length > 1, `the stream came in ${pieces.length} piece(s)`);
    const text = pieces.join("").split("\n")
      .filter((line) => line.startsWith("data: "))
      .map((line) => JSON.parse(line.slice(6)))
      .filter((event) => event.type === "content_block_delta" && event.delta.type === "text_delta")
      .map((event) => event.delta.text)
      .join("");
    assert.equal(text, await essayText());
  } finally {
    await sluice.close();
  }
});
