/**
 * `main.ts` as a newcomer runs it: no key, replay mode, one command.
 */
import assert from "node:assert/strict";
import { readFixture } from "./helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Starts main.ts on a free loopback port; resolves once it says where it listens. */
async function startMain(env: Record<string, string>) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net=127.0.0.1", "--allow-env", "--allow-read", "--allow-write", MAIN],
    env: { NO_COLOR: "1", PORT: "0", HOSTNAME: "127.0.0.1", ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  for (;;) {
    const { value, done } = await lines.read();
    if (done) break;
    seen += value;
    const match = /listening on (http:\/\/[^\s]+)/.exec(seen);
    if (match) {
      return {
        url: match[1],
        seen: () => seen,
        async stop() {
          child.kill("SIGTERM");
          await lines.cancel();
          await child.stderr.cancel();
          await child.status;
        },
      };
    }
  }
  const status = await child.status;
  throw new Error(`main.ts exited (${status.code}) before listening: ${seen}`);
}

Deno.test("with no API key, main.ts serves recorded streams in replay mode", async () => {
  const kvDir = await Deno.makeTempDir();
  const server = await startMain({
    SLUICE_KV_PATH: `${kvDir}/kv.sqlite3`,
    SLUICE_REPLAY_SPEED: "0",
    SLUICE_LOG_LEVEL: "info",
  });
  try {
    assert.match(server.seen(), /replay/);
    const health = await fetch(`${server.url}/health`);
    assert.deepEqual(await health.json(), { status: "ok", upstream: "replay" });
    const response = await fetch(`${server.url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        // The recording's own model: replay echoes the requested one, so the bytes are the file's.
        model: "claude-haiku-4-5-20251001",
        max_tokens: 1024,
        stream: true,
        messages: [{ role: "user", content: "Write me a 3 word sentence" }],
      }),
    });
    assert.equal(response.status, 200);
    assert.deepEqual(
      new Uint8Array(await response.arrayBuffer()),
      await readFixture("three-words.sse"),
    );
  } finally {
    await server.stop();
    await Deno.remove(kvDir, { recursive: true });
  }
});

Deno.test("a bad environment value stops main.ts with a message naming the variable", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net=127.0.0.1", "--allow-env", "--allow-read", "--allow-write", MAIN],
    env: { NO_COLOR: "1", PORT: "not-a-port" },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(output.code, 1);
  assert.match(new TextDecoder().decode(output.stderr), /PORT/);
});
