/**
 * `main.ts` as a newcomer runs it: no key, replay mode, one command.
 */
import assert from "node:assert/strict";
import { MAIN_PATH, readFixture, startMain } from "./helpers.ts";

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

Deno.test("a bad environment value stops main.ts with a message naming the variable", async (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ PORT: "not-a-port" }, /PORT/],
    [{ SLUICE_PRICES: '{"claude-x": {"input": 1}}' }, /^sluice: SLUICE_PRICES: claude-x\.output/m],
    [
      { SLUICE_KEY_BUDGETS: '{"*": {"daily_usd": -5}}' },
      /^sluice: SLUICE_KEY_BUDGETS: \*\.daily_usd/m,
    ],
  ];
  for (const [env, named] of cases) {
    await t.step(Object.keys(env)[0], async () => {
      const output = await startUp(env);
      assert.equal(output.code, 1);
      assert.match(new TextDecoder().decode(output.stderr), named);
    });
  }
});

Deno.test("a port in use stops main.ts with one line that says so and names PORT", async (t) => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const kvDir = await Deno.makeTempDir();
  try {
    for (const workers of ["1", "2"]) {
      await t.step(`SLUICE_WORKERS=${workers}`, async () => {
        const output = await startUp({
          HOSTNAME: "127.0.0.1",
          PORT: String(taken.addr.port),
          SLUICE_WORKERS: workers,
          SLUICE_KV_PATH: `${kvDir}/kv.sqlite3`,
        });
        const stderr = new TextDecoder().decode(output.stderr);
        assert.equal(output.code, 1, stderr);
        assert.match(
          stderr,
          new RegExp(`^sluice: .*127\\.0\\.0\\.1:${taken.addr.port} is already in use`, "m"),
        );
        assert.match(stderr, /set PORT to a free port/);
        assert.doesNotMatch(stderr, /Uncaught|at .*\.ts:\d+/);
      });
    }
  } finally {
    taken.close();
    await Deno.remove(kvDir, { recursive: true });
  }
});

Deno.test("several workers on an in-memory KV store are refused at start: each would count apart", async () => {
  const output = await startUp({
    HOSTNAME: "127.0.0.1",
    PORT: "0",
    SLUICE_WORKERS: "2",
    SLUICE_KV_PATH: ":memory:",
  });
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 1, stderr);
  assert.match(
    stderr,
    /^sluice: SLUICE_KV_PATH=:memory: gives each of the 2 workers a store of its own/m,
  );
  assert.doesNotMatch(stderr, /Uncaught/);
});

function startUp(env: Record<string, string>) {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      "--allow-env",
      "--allow-read",
      "--allow-write",
      MAIN_PATH,
    ],
    env: { NO_COLOR: "1", ...env },
    clearEnv: true,
    // A main.ts that starts instead of stopping is killed, and fails the test's exit code check.
    signal: AbortSignal.timeout(20_000),
    stdout: "piped",
    stderr: "piped",
  }).output();
}

/** A Deno KV file with entries whose pages past the header are then overwritten. */
async function damagedKvFile(path: string) {
  const kv = await Deno.openKv(path);
  for (let i = 0; i < 100; i++) await kv.set(["x", i], "v".repeat(1000));
  kv.close();
  const bytes = await Deno.readFile(path);
  for (let i = 4096; i < bytes.length; i++) bytes[i] = (i * 7919) & 0xff;
  await Deno.writeFile(path, bytes);
}

Deno.test("a damaged KV file still lets main.ts start: /health reports it, /v1/messages answers, what needs KV is a clear 503", async (t) => {
  const kvDir = await Deno.makeTempDir();
  const cases: [string, (path: string) => Promise<void>][] = [
    ["a file whose pages are damaged", damagedKvFile],
    ["a file that is not a database", (path) => Deno.writeTextFile(path, "x".repeat(8192))],
  ];
  try {
    for (const [name, damage] of cases) {
      await t.step(name, async () => {
        const path = `${kvDir}/${name.replaceAll(" ", "-")}.sqlite3`;
        await damage(path);
        const server = await startMain({
          SLUICE_KV_PATH: path,
          SLUICE_REPLAY_SPEED: "0",
          SLUICE_LOG_LEVEL: "info",
        });
        try {
          const health = await fetch(`${server.url}/health`);
          assert.equal(health.status, 200);
          const report = await health.json();
          assert.equal(report.status, "degraded");
          assert.equal(report.kv.ok, false);
          assert.match(report.kv.error, /malformed|not a database/);
          const message = await fetch(`${server.url}/v1/messages`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              model: "claude-haiku-4-5-20251001",
              max_tokens: 1024,
              stream: true,
              messages: [{ role: "user", content: "Write me a 3 word sentence" }],
            }),
          });
          assert.equal(message.status, 200);
          assert.deepEqual(
            new Uint8Array(await message.arrayBuffer()),
            await readFixture("three-words.sse"),
          );
          for (
            const [method, route] of [
              ["POST", "/conversations"],
              ["GET", "/stats"],
              ["GET", "/metrics"],
              ["GET", "/chat/streams/cs_0123456789abcdef0123456789abcdef"],
            ]
          ) {
            const refused = await fetch(`${server.url}${route}`, { method });
            assert.equal(refused.status, 503, `${method} ${route}`);
            const body = await refused.json();
            assert.equal(body.type, "error");
            assert.equal(body.error.type, "api_error");
            assert.match(body.error.message, /need Deno KV, which failed to open/);
          }
          assert.match(server.seen() + server.errors(), /Deno KV could not be opened/);
        } finally {
          await server.stop();
        }
      });
    }
  } finally {
    await Deno.remove(kvDir, { recursive: true });
  }
});
