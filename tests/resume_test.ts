/**
 * No answer lost: the disconnect policy (`SLUICE_ON_DISCONNECT`, `x-sluice-on-disconnect`) and
 * resumable `/chat` streams (`GET /chat/streams/{id}`), in process and across real processes.
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { manualClock } from "../lib/clock.ts";
import { silentLogger } from "../lib/log.ts";
import { loadFixtures } from "../lib/replay/fixtures.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import type { SseEvent } from "../lib/stream/sse.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import {
  CHUNK_BYTES,
  createStreamWriter,
  CUT_MESSAGE,
  openResumedStream,
} from "../lib/chat/resume.ts";
import { FIXTURES_DIR, readFixture, seededRandom, startMain, testConfig } from "./helpers.ts";

/**
 * A replay sleep run by the test, not by time: each paced chunk takes one unit of allowance,
 * and waits while there is none. The upstream's progress is then exactly what the test allows.
 */
function gatedSleep() {
  let allowance = Infinity;
  const waiters: Array<() => void> = [];
  const release = () => {
    while (allowance > 0 && waiters.length > 0) {
      allowance--;
      waiters.shift()!();
    }
  };
  return {
    sleep(ms: number): Promise<void> {
      if (ms <= 0) return Promise.resolve();
      if (allowance > 0 && waiters.length === 0) {
        allowance--;
        return Promise.resolve();
      }
      return new Promise((resolve) => waiters.push(resolve));
    },
    /** Lets `n` more chunks through (Infinity: all). */
    allow(n: number) {
      allowance = n;
      release();
    },
  };
}

async function resumeApp(
  env: Record<string, string> = {},
  clock = undefined as
    | ReturnType<typeof manualClock>
    | undefined,
) {
  const gate = gatedSleep();
  const replay = createReplayFetch(await loadFixtures(FIXTURES_DIR), {
    // Every chunk is paced (a wait above 0), so each goes through the gate.
    pace: { ttftMs: 1, tokensPerSecond: 1000, speed: 1 },
    sleep: (ms) => gate.sleep(ms),
  });
  const upstream = createUpstream({
    mode: "replay",
    apiKey: "replay",
    baseURL: "http://replay.test",
    maxRetries: 0,
    fetch: replay,
  });
  const kv = await Deno.openKv(":memory:");
  const stats = memorySink();
  const app = createApp({
    config: testConfig({ SLUICE_API_KEYS: "key-one,key-two", SLUICE_RESUME_FLUSH_MS: "1", ...env }),
    upstream,
    logger: silentLogger,
    stats,
    kv,
    clock,
  });
  const request = (path: string, init: RequestInit & { key?: string } = {}) => {
    const headers = new Headers(init.headers);
    headers.set("x-api-key", init.key ?? "key-one");
    return app.request(path, { ...init, headers });
  };
  const chat = (body: unknown, init: { key?: string; headers?: Record<string, string> } = {}) =>
    request("/chat", {
      method: "POST",
      key: init.key,
      headers: { "content-type": "application/json", accept: "text/event-stream", ...init.headers },
      body: JSON.stringify(body),
    });
  return { app, kv, stats, gate, request, chat };
}

/** The text of a fixture's answer, from its bytes. */
async function expectedText(fixture: string): Promise<string> {
  const accumulator = new EventAccumulator();
  for (const event of decodeAll(await readFixture(`${fixture}.sse`))) accumulator.push(event);
  return (accumulator.end().message?.content ?? [])
    .map((block) => (block.type === "text" ? block.text : ""))
    .join("");
}

function textOf(events: SseEvent[]): string {
  return events.filter((e) => e.event === "text").map((e) => JSON.parse(e.data).text).join("");
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Reads a body until at least `bytes` bytes came, then drops the connection; returns those bytes. */
async function readThenCut(
  response: Response,
  bytes: number,
  beforeCut = () => {},
): Promise<Uint8Array> {
  const reader = response.body!.getReader();
  const parts: Uint8Array[] = [];
  let seen = 0;
  while (seen < bytes) {
    const { value, done } = await reader.read();
    if (done) break;
    parts.push(value);
    seen += value.length;
  }
  beforeCut();
  await reader.cancel();
  // The client has the first `bytes` bytes only: the rest of the last chunk never arrived.
  return concat(parts).subarray(0, bytes);
}

async function eventually(predicate: () => boolean | Promise<boolean>, what: string) {
  for (let i = 0; i < 400; i++) {
    if (await predicate()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`timed out waiting for ${what}`);
}

Deno.test("a /chat client cut at a random byte and resuming after a random delay gets the whole answer exactly once", async (t) => {
  const { kv, gate, chat, request } = await resumeApp();
  try {
    const text = await expectedText("default");
    const whole = await chat({ message: "Tell me about sluice" });
    const streamId = whole.headers.get("x-sluice-stream-id");
    const wholeBytes = new Uint8Array(await whole.arrayBuffer());
    const wholeEvents = decodeAll(wholeBytes);

    await t.step("an uninterrupted stream numbers every event from 1 and names its stream", () => {
      assert.match(streamId ?? "", /^[0-9a-f-]{36}$/);
      assert.deepEqual(wholeEvents.map((e) => e.id), wholeEvents.map((_, i) => String(i + 1)));
      assert.equal(JSON.parse(wholeEvents[0].data).stream_id, streamId);
      assert.equal(textOf(wholeEvents), text);
      assert.equal(wholeEvents.at(-1)!.event, "done");
    });

    await t.step("200 seeded trials: no duplicated, missing or reordered event", async () => {
      const random = seededRandom(17);
      let live = 0;
      let after = 0;
      // The paced chunks of one answer (one per event of the fixture, about).
      const steps = decodeAll(await readFixture("default.sse")).length;
      for (let trial = 0; trial < 200; trial++) {
        gate.allow(Infinity);
        const created = await (await request("/conversations", { method: "POST" })).json();
        const response = await chat({
          message: "Tell me about sluice",
          conversation_id: created.id,
        });
        const id = response.headers.get("x-sluice-stream-id")!;
        const cutAt = 1 + Math.floor(random() * (wholeBytes.length - 2));
        // While the client is away, the upstream moves on by a random number of chunks: some
        // trials resume inside the answer, the others after its end.
        const away = Math.floor(random() * steps * 1.5);
        const got = await readThenCut(response, cutAt, () => gate.allow(away));
        const before = decodeAll(got);
        const lastId = before.at(-1)?.id;
        await new Promise((r) => setTimeout(r, Math.floor(random() * 3)));
        const headers: Record<string, string> = {};
        let query = "";
        if (lastId !== undefined) {
          if (trial % 2 === 0) headers["last-event-id"] = lastId;
          else query = `?after=${lastId}`;
        }
        const resumed = await request(`/chat/streams/${id}${query}`, { headers });
        assert.equal(resumed.status, 200, `trial ${trial}`);
        const reader = resumed.body!.getReader();
        const parts: Uint8Array[] = [];
        const first = await reader.read();
        if (!first.done) parts.push(first.value);
        const head =
          (await Array.fromAsync(kv.list<{ state: string }>({ prefix: ["sluice", "streams"] })))
            .find((entry) => entry.key[3] === id && entry.key[4] === "head");
        if (head?.value.state === "live") live++;
        else after++;
        gate.allow(Infinity);
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parts.push(value);
        }
        const events = [...before, ...decodeAll(concat(parts))];
        assert.deepEqual(
          events.map((e) => e.id),
          events.map((_, i) => String(i + 1)),
          `trial ${trial}: ids`,
        );
        assert.equal(textOf(events), text, `trial ${trial}: text`);
        assert.equal(events.at(-1)!.event, "done", `trial ${trial}: final event`);
        const conversation = await (await request(`/conversations/${created.id}`)).json();
        assert.deepEqual(conversation.messages, [
          { role: "user", content: "Tell me about sluice" },
          { role: "assistant", content: text },
        ], `trial ${trial}: conversation`);
      }
      // Both cases were exercised (the seed decides how many of each).
      assert.ok(live > 0, "some trials resumed while the answer was still being written");
      assert.ok(after > 0, "some trials resumed after the answer ended");
    });
  } finally {
    gate.allow(Infinity);
    kv.close();
  }
});

Deno.test("a client that leaves mid-answer does not lose it (SLUICE_ON_DISCONNECT=finish by default)", async (t) => {
  const { kv, stats, gate, chat, request } = await resumeApp();
  try {
    const text = await expectedText("default");
    const created = await (await request("/conversations", { method: "POST" })).json();
    const response = await chat({ message: "Tell me about sluice", conversation_id: created.id }, {
      headers: { accept: "text/plain" },
    });
    await readThenCut(response, 5);

    await t.step("the whole answer is stored in the conversation", async () => {
      await eventually(async () => {
        const conversation = await (await request(`/conversations/${created.id}`)).json();
        return conversation.messages.length === 2;
      }, "the stored exchange");
      const conversation = await (await request(`/conversations/${created.id}`)).json();
      assert.equal(conversation.messages[1].content, text);
    });

    await t.step("the request is recorded as ok with the whole answer's usage", async () => {
      await eventually(() => stats.records.length === 1, "the stats record");
      assert.equal(stats.records[0].outcome, "ok");
      assert.ok(stats.records[0].usage.output_tokens > 1);
    });

    await t.step(
      "x-sluice-on-disconnect: abort stops the call at once, and a resume says why",
      async () => {
        const other = await (await request("/conversations", { method: "POST" })).json();
        const response = await chat(
          { message: "Tell me about sluice", conversation_id: other.id },
          {
            headers: { "x-sluice-on-disconnect": "abort" },
          },
        );
        const id = response.headers.get("x-sluice-stream-id")!;
        const got = decodeAll(await readThenCut(response, 300));
        await eventually(() => stats.records.length === 2, "the stats record");
        assert.equal(stats.records[1].outcome, "client_aborted");
        const rest = decodeAll(
          new Uint8Array(
            await (await request(`/chat/streams/${id}?after=${got.at(-1)!.id}`)).arrayBuffer(),
          ),
        );
        assert.equal(rest.at(-1)!.event, "error");
        assert.match(JSON.parse(rest.at(-1)!.data).error.message, /abort/);
        const conversation = await (await request(`/conversations/${other.id}`)).json();
        assert.deepEqual(conversation.messages, []);
      },
    );
  } finally {
    gate.allow(Infinity);
    kv.close();
  }
});

Deno.test("/v1/messages aborts at once when its client leaves, unless it asked to finish", async (t) => {
  const { kv, stats, gate, request } = await resumeApp();
  const send = (headers: Record<string, string> = {}) =>
    request("/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({
        model: "claude-opus-4-5",
        max_tokens: 64,
        stream: true,
        messages: [{ role: "user", content: "Tell me about sluice" }],
      }),
    });
  try {
    await t.step(
      "by default, the request is recorded as client_aborted with the usage it reached",
      async () => {
        await readThenCut(await send(), 600);
        await eventually(() => stats.records.length === 1, "the stats record");
        assert.equal(stats.records[0].outcome, "client_aborted");
        // message_start came: its input tokens count.
        assert.ok(stats.records[0].usage.input_tokens > 0);
      },
    );

    await t.step("with x-sluice-on-disconnect: finish, the answer is read to its end", async () => {
      await readThenCut(await send({ "x-sluice-on-disconnect": "finish" }), 600);
      await eventually(() => stats.records.length === 2, "the stats record");
      assert.equal(stats.records[1].outcome, "ok");
      assert.ok(stats.records[1].usage.output_tokens > stats.records[0].usage.output_tokens);
    });

    await t.step("without the header, the bytes are the upstream's (no id lines)", async () => {
      const body = await (await send()).text();
      assert.equal(/^id:/m.test(body), false);
      assert.equal(/^event: message_stop/m.test(body), true);
    });
  } finally {
    gate.allow(Infinity);
    kv.close();
  }
});

Deno.test("GET /chat/streams/{id} refuses what it must", async (t) => {
  const clock = manualClock(Date.now());
  const { kv, chat, request } = await resumeApp({ SLUICE_RESUME_TTL_MS: "60000" }, clock);
  try {
    const response = await chat({ message: "Tell me about sluice" });
    const id = response.headers.get("x-sluice-stream-id")!;
    await response.arrayBuffer();

    await t.step("the key that started it can resume it", async () => {
      await eventually(
        async () => (await request(`/chat/streams/${id}`)).status === 200,
        "the head",
      );
      const events = decodeAll(
        new Uint8Array(await (await request(`/chat/streams/${id}?after=2`)).arrayBuffer()),
      );
      assert.equal(events[0].id, "3");
      assert.equal(events.at(-1)!.event, "done");
    });

    await t.step("another key gets a 404, as for a stream that never was", async () => {
      const other = await request(`/chat/streams/${id}`, { key: "key-two" });
      assert.equal(other.status, 404);
      assert.equal((await other.json()).error.type, "not_found_error");
      const unknown = await request(`/chat/streams/${crypto.randomUUID()}`);
      assert.equal(unknown.status, 404);
      await unknown.body?.cancel();
    });

    await t.step("a malformed Last-Event-ID is a 400 in Anthropic's shape", async () => {
      for (const bad of ["abc", "-1", "1.5"]) {
        const refused = await request(`/chat/streams/${id}`, { headers: { "last-event-id": bad } });
        assert.equal(refused.status, 400);
        const body = await refused.json();
        assert.equal(body.type, "error");
        assert.equal(body.error.type, "invalid_request_error");
      }
    });

    await t.step("an expired stream is a 404", async () => {
      clock.advance(60_001);
      const expired = await request(`/chat/streams/${id}`);
      assert.equal(expired.status, 404);
      await expired.body?.cancel();
    });
  } finally {
    kv.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Real processes sharing one KV file.

async function twoInstances(env: Record<string, string>) {
  const dir = await Deno.makeTempDir({ dir: new URL(".", import.meta.url).pathname });
  const shared = {
    SLUICE_KV_PATH: `${dir}/kv.sqlite3`,
    SLUICE_API_KEYS: "key-one,key-two",
    SLUICE_ADMIN_KEY: "admin-key",
    SLUICE_STATS_WRITE_MS: "0",
    SLUICE_LOG_LEVEL: "info", // startMain waits for the "listening on" line
    SLUICE_REPLAY_TTFT_MS: "0",
    SLUICE_RESUME_FLUSH_MS: "20",
    ...env,
  };
  const a = await startMain(shared);
  const b = await startMain(shared);
  return {
    a,
    b,
    async close() {
      await Promise.allSettled([a.stop(), b.stop()]);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

function post(url: string, body: unknown): Promise<Response> {
  return fetch(`${url}/chat`, {
    method: "POST",
    headers: {
      "x-api-key": "key-one",
      "content-type": "application/json",
      accept: "text/event-stream",
    },
    body: JSON.stringify(body),
  });
}

/** Reads events from `reader` until `count` complete events came. */
async function readEvents(reader: ReadableStreamDefaultReader<Uint8Array>, count: number) {
  const parts: Uint8Array[] = [];
  for (;;) {
    const events = decodeAll(concat(parts));
    if (events.length >= count) return { events, bytes: concat(parts) };
    const { value, done } = await reader.read();
    if (done) return { events, bytes: concat(parts) };
    parts.push(value);
  }
}

Deno.test("a stream started on one instance is resumed on another while it is being written", async () => {
  const instances = await twoInstances({ SLUICE_REPLAY_TOKENS_PER_SECOND: "200" });
  try {
    const text = await expectedText("default");
    const response = await post(instances.a.url, { message: "Tell me about sluice" });
    const id = response.headers.get("x-sluice-stream-id")!;
    const reader = response.body!.getReader();
    const { events: before } = await readEvents(reader, 5);
    // A keeps reading its own answer in the background; B is asked for the rest meanwhile.
    let aEnded = false;
    const aRest = (async () => {
      const parts: Uint8Array[] = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parts.push(value);
      }
      aEnded = true;
      return parts;
    })();
    const lastId = before.at(4)!.id!;
    const resumed = await fetch(`${instances.b.url}/chat/streams/${id}`, {
      headers: { "x-api-key": "key-one", "last-event-id": lastId },
    });
    assert.equal(resumed.status, 200);
    const bReader = resumed.body!.getReader();
    const firstResumed = await bReader.read();
    assert.equal(aEnded, false, "B answered while A's answer was still being written");
    const parts = [firstResumed.value!];
    for (;;) {
      const { value, done } = await bReader.read();
      if (done) break;
      parts.push(value);
    }
    const events = [...before.slice(0, 5), ...decodeAll(concat(parts))];
    assert.deepEqual(events.map((e) => e.id), events.map((_, i) => String(i + 1)));
    assert.equal(textOf(events), text);
    assert.equal(events.at(-1)!.event, "done");
    await aRest;
  } finally {
    await instances.close();
  }
});

Deno.test("kill -9 of the instance mid-answer: another instance sends what was buffered, then says it was cut", async (t) => {
  const instances = await twoInstances({
    SLUICE_REPLAY_TOKENS_PER_SECOND: "20",
    SLUICE_RESUME_STALE_MS: "500",
  });
  try {
    const text = await expectedText("default");
    const created = await (await fetch(`${instances.a.url}/conversations`, {
      method: "POST",
      headers: { "x-api-key": "key-one" },
    })).json();
    const response = await post(instances.a.url, {
      message: "Tell me about sluice",
      conversation_id: created.id,
    });
    const id = response.headers.get("x-sluice-stream-id")!;
    const reader = response.body!.getReader();
    const { events: before } = await readEvents(reader, 4);
    // Let the writer commit what A sent, then kill A without any chance to clean up.
    await new Promise((r) => setTimeout(r, 100));
    Deno.kill(instances.a.pid, "SIGKILL");
    await reader.cancel().catch(() => {});
    const lastId = before.at(3)!.id!;
    const resumed = await fetch(`${instances.b.url}/chat/streams/${id}`, {
      headers: { "x-api-key": "key-one", "last-event-id": lastId },
    });
    assert.equal(resumed.status, 200);
    const events = [
      ...before.slice(0, 4),
      ...decodeAll(new Uint8Array(await resumed.arrayBuffer())),
    ];
    const received = textOf(events);

    await t.step("the resumed stream is the buffered part, then an error event saying so", () => {
      assert.ok(text.startsWith(received));
      assert.ok(received.length < text.length);
      const last = events.at(-1)!;
      assert.equal(last.event, "error");
      assert.equal(JSON.parse(last.data).error.message, CUT_MESSAGE);
      assert.deepEqual(events.map((e) => e.id), events.map((_, i) => String(i + 1)));
    });

    await t.step("the conversation holds the partial answer, marked incomplete", async () => {
      const conversation = await (await fetch(`${instances.b.url}/conversations/${created.id}`, {
        headers: { "x-api-key": "key-one" },
      })).json();
      assert.equal(conversation.messages.length, 2);
      assert.equal(conversation.messages[1].content, received);
      assert.equal(conversation.messages[1].incomplete, true);
    });

    await t.step("the stats record the request as incomplete", async () => {
      await eventually(async () => {
        const recent = await (await fetch(`${instances.b.url}/stats/recent`, {
          headers: { authorization: "Bearer admin-key" },
        })).json();
        return recent.requests?.some((r: { outcome: string; endpoint: string }) =>
          r.outcome === "incomplete" && r.endpoint === "/chat"
        ) ?? false;
      }, "the incomplete record");
    });

    await t.step("a second resume gets the same end, and the cut is recorded once", async () => {
      const again = decodeAll(
        new Uint8Array(
          await (await fetch(
            `${instances.b.url}/chat/streams/${id}?after=${lastId}`,
            { headers: { "x-api-key": "key-one" } },
          )).arrayBuffer(),
        ),
      );
      assert.equal(again.at(-1)!.event, "error");
      const conversation = await (await fetch(`${instances.b.url}/conversations/${created.id}`, {
        headers: { "x-api-key": "key-one" },
      })).json();
      assert.equal(conversation.messages.length, 2);
    });
  } finally {
    await instances.close();
  }
});

Deno.test("a stream larger than one KV value is stored in chunks under the limit and read back whole", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const writer = createStreamWriter({
      kv,
      owner: "owner",
      clock: manualClock(Date.now()),
      logger: silentLogger,
      settings: { ttlMs: 60_000, flushMs: 1, staleMs: 10_000 },
      meta: { requestId: "r", startedAt: 0, model: null, conversationId: null, message: null },
    });
    const random = seededRandom(5);
    const sent: Uint8Array[] = [];
    for (let i = 0; i < 400; i++) {
      // Events of 1 to ~2 KB, with multi-byte text: about 400 KB in all.
      const text = "é✓".repeat(1 + Math.floor(random() * 400));
      sent.push(writer.push(`event: text\ndata: ${JSON.stringify({ text })}\n\n`));
    }
    sent.push(writer.push(`event: done\ndata: {}\n\n`));
    writer.end();
    await writer.flushed();
    const chunks = await Array.fromAsync(kv.list<{ bytes: Uint8Array }>({
      prefix: ["sluice", "streams", "owner", writer.id, "chunk"],
    }));
    assert.ok(chunks.length > 1);
    for (const chunk of chunks) assert.ok(chunk.value.bytes.length <= CHUNK_BYTES);
    const resumed = await openResumedStream({
      kv,
      owner: "owner",
      id: writer.id,
      after: 0,
      clock: manualClock(Date.now()),
      settings: { ttlMs: 60_000, flushMs: 1, staleMs: 10_000 },
      keepAliveMs: 0,
      logger: silentLogger,
    });
    assert.deepEqual(new Uint8Array(await new Response(resumed).arrayBuffer()), concat(sent));
  } finally {
    kv.close();
  }
});
