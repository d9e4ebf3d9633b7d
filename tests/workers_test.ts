/**
 * main.ts on every core: with SLUICE_WORKERS=2 one port is served by two isolates (workers on
 * SO_REUSEPORT), which share stats and conversations through the KV file. Every request below
 * opens a connection of its own, so the kernel spreads them over both isolates.
 */
import assert from "node:assert/strict";
import { ownConnections, readFixture, startMain } from "./helpers.ts";

/** One request on a connection of its own. */
async function fresh(url: string, init?: RequestInit): Promise<Response> {
  const connection = ownConnections();
  try {
    const response = await connection.fetch(url, init);
    const body = new Uint8Array(await response.arrayBuffer());
    return new Response(body, { status: response.status, headers: response.headers });
  } finally {
    connection.close();
  }
}

const json = { "content-type": "application/json" };

Deno.test("with SLUICE_WORKERS=2 two isolates serve one port and share stats and conversations", async (t) => {
  const kvDir = await Deno.makeTempDir();
  const server = await startMain({
    SLUICE_KV_PATH: `${kvDir}/kv.sqlite3`,
    SLUICE_REPLAY_SPEED: "0",
    SLUICE_STATS_WRITE_MS: "0",
    SLUICE_WORKERS: "2",
    SLUICE_LOG_LEVEL: "info",
  });
  let stopped = false;
  try {
    assert.match(server.seen(), /2 workers/);
    const requests = 12;

    await t.step(
      "every request, each on its own connection, is answered byte for byte",
      async () => {
        const expected = await readFixture("three-words.sse");
        for (let i = 0; i < requests; i++) {
          const response = await fresh(`${server.url}/v1/messages`, {
            method: "POST",
            headers: json,
            body: JSON.stringify({
              model: "claude-haiku-4-5-20251001",
              max_tokens: 1024,
              stream: true,
              messages: [{ role: "user", content: "Write me a 3 word sentence" }],
            }),
          });
          assert.equal(response.status, 200);
          assert.deepEqual(new Uint8Array(await response.arrayBuffer()), expected);
        }
      },
    );

    await t.step("/stats counts every request whichever isolate served it", async () => {
      // Each isolate writes its own records (at once here); any isolate's /stats reads them all.
      let totals: number[] = [];
      for (let attempt = 0; attempt < 100; attempt++) {
        totals = [];
        for (let i = 0; i < 6; i++) {
          const report = await (await fresh(`${server.url}/stats`)).json();
          totals.push(report.requests.total);
        }
        if (totals.every((total) => total === requests)) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.deepEqual(totals, Array(6).fill(requests));
    });

    await t.step("a conversation created on one connection goes on over others", async () => {
      const created = await (await fresh(`${server.url}/conversations`, { method: "POST" })).json();
      for (let i = 0; i < 3; i++) {
        const response = await fresh(`${server.url}/chat`, {
          method: "POST",
          headers: json,
          body: JSON.stringify({
            message: `turn ${i}`,
            conversation_id: created.id,
            stream: false,
          }),
        });
        assert.equal(response.status, 200);
      }
      const stored = await (await fresh(`${server.url}/conversations/${created.id}`)).json();
      assert.deepEqual(
        stored.messages.filter((m: { role: string }) => m.role === "user").map((
          m: { content: string },
        ) => m.content),
        ["turn 0", "turn 1", "turn 2"],
      );
    });

    await t.step("SIGTERM stops both isolates gracefully and the process exits 0", async () => {
      const status = await server.stop();
      stopped = true;
      // Unhandled, SIGTERM would end it with 143; 0 is the end of the graceful sequence, which
      // the main thread reaches only after every isolate has reported its own.
      assert.equal(status.code, 0);
      assert.equal(server.seen().match(/sluice stopped/g)?.length, 2, "each isolate stopped");
    });
  } finally {
    if (!stopped) await server.stop();
    await Deno.remove(kvDir, { recursive: true });
  }
});
