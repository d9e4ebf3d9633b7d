/**
 * Resumable `/v1/messages` streams (`x-sluice-resumable: true`): the upstream's events with
 * `id:` lines added, buffered in KV and resumed by `GET /chat/streams/{id}`; and without the
 * header, the upstream's bytes unchanged.
 */
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import { CUT_MESSAGE } from "../lib/chat/resume.ts";
import { ABORTED_MESSAGE } from "../lib/proxy/resumable_stream.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import {
  clean,
  projectFixtures,
  readFixture,
  replayApp,
  sdkOracle,
  seededRandom,
} from "./helpers.ts";
import {
  concat,
  eventually,
  expectedUsage,
  readEvents,
  readThenCut,
  resumeApp,
  twoInstances,
} from "./resume_support.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A stream's bytes without the `id:` lines sluice adds: each event's last line, before its blank one. */
function withoutIds(bytes: Uint8Array): Uint8Array {
  return encoder.encode(decoder.decode(bytes).replace(/^id: \d+\n(?=\r\n|\n|\r)/gm, ""));
}

/** The model a recording names in its `message_start`, so replay sends it unchanged. */
function recordedModel(sse: Uint8Array): string {
  const start = decodeAll(sse).find((event) => event.event === "message_start");
  return start ? JSON.parse(start.data).message.model : "claude-sonnet-5-5";
}

function messagesBody(model = "claude-sonnet-5-5", stream = true) {
  return JSON.stringify({
    model,
    max_tokens: 4096,
    stream,
    messages: [{ role: "user", content: "Tell me about sluice" }],
  });
}

/** The bytes up to the end of the last whole event received, and that event's id. */
function wholeEvents(got: Uint8Array): { bytes: Uint8Array; lastId: string | undefined } {
  const text = decoder.decode(got);
  const end = text.lastIndexOf("\n\n");
  const whole = end < 0 ? "" : text.slice(0, end + 2);
  return {
    bytes: encoder.encode(whole),
    lastId: [...whole.matchAll(/^id: (\d+)$/gm)].at(-1)?.[1],
  };
}

Deno.test("with x-sluice-resumable, every event gets an id and the rest is the upstream's bytes", async (t) => {
  const { app, kv } = await resumeApp();
  const set = await projectFixtures();
  const send = (name: string, model: string, headers: Record<string, string>) =>
    app.request("/v1/messages", {
      method: "POST",
      headers: {
        "x-api-key": "key-one",
        "content-type": "application/json",
        "x-sluice-fixture": name,
        ...headers,
      },
      body: messagesBody(model),
    });
  try {
    for (const fixture of set.fixtures.values()) {
      if (!fixture.sse) continue;
      await t.step(fixture.name, async () => {
        const model = recordedModel(fixture.sse!);
        const plain = new Uint8Array(await (await send(fixture.name, model, {})).arrayBuffer());
        const response = await send(fixture.name, model, { "x-sluice-resumable": "true" });
        assert.match(response.headers.get("x-sluice-stream-id") ?? "", /^[0-9a-f-]{36}$/);
        assert.match(response.headers.get("content-type")!, /^text\/event-stream/);
        const bytes = new Uint8Array(await response.arrayBuffer());
        const events = decodeAll(bytes);
        assert.ok(events.length > 0);
        assert.deepEqual(events.map((e) => e.id), events.map((_, i) => String(i + 1)));
        assert.deepEqual(withoutIds(bytes), plain);
      });
    }
  } finally {
    kv.close();
  }
});

Deno.test("the official SDK builds the same message and events with and without x-sluice-resumable", async (t) => {
  const { app, kv } = await resumeApp();
  const set = await projectFixtures();
  const client = new Anthropic({
    apiKey: "key-one",
    baseURL: "http://sluice.test",
    maxRetries: 0,
    logLevel: "off", // the cut fixtures' unparsable event is expected, with and without
    fetch: async (url: string | URL | Request, init?: RequestInit) =>
      await app.fetch(new Request(url, init)),
  });
  /** What the SDK makes of one fixture: events, final message or error, and the stream id. */
  async function viaSdk(name: string, model: string, headers: Record<string, string>) {
    const stream = client.messages.stream(
      { model, max_tokens: 4096, messages: [{ role: "user", content: "hi" }] },
      { headers: { "x-sluice-fixture": name, ...headers } },
    );
    const events: unknown[] = [];
    stream.on("streamEvent", (event) => events.push(clean(event)));
    let message: unknown = null;
    let error: string | null = null;
    try {
      message = clean(await stream.finalMessage());
    } catch (caught) {
      error = String((caught as Error).message);
    }
    const { response } = await stream.withResponse();
    return { events, message, error, streamId: response.headers.get("x-sluice-stream-id") };
  }
  try {
    for (const fixture of set.fixtures.values()) {
      if (!fixture.sse) continue;
      await t.step(fixture.name, async () => {
        const model = recordedModel(fixture.sse!);
        const plain = await viaSdk(fixture.name, model, {});
        const resumable = await viaSdk(fixture.name, model, { "x-sluice-resumable": "true" });
        assert.equal(plain.streamId, null);
        assert.match(resumable.streamId ?? "", /^[0-9a-f-]{36}$/);
        assert.ok(plain.events.length > 0);
        assert.deepEqual(resumable.events, plain.events);
        assert.deepEqual(resumable.message, plain.message);
        assert.equal(resumable.error, plain.error);
      });
    }
  } finally {
    kv.close();
  }
});

Deno.test("a resumable /v1/messages client cut at a random byte and resuming gets the upstream's stream exactly once", async () => {
  const { kv, gate, stats, request } = await resumeApp();
  const send = () =>
    request("/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json", "x-sluice-resumable": "true" },
      body: messagesBody(),
    });
  try {
    const fixture = await readFixture("default.sse");
    const whole = new Uint8Array(await (await send()).arrayBuffer());
    assert.deepEqual(withoutIds(whole), fixture);
    const oracle = await sdkOracle([fixture]);
    const steps = decodeAll(fixture).length;
    const random = seededRandom(1717);
    const trials = 100;
    for (let trial = 0; trial < trials; trial++) {
      gate.allow(Infinity);
      const response = await send();
      const id = response.headers.get("x-sluice-stream-id")!;
      const cutAt = 1 + Math.floor(random() * (whole.length - 2));
      const away = Math.floor(random() * steps * 1.5);
      const before = wholeEvents(await readThenCut(response, cutAt, () => gate.allow(away)));
      const headers: Record<string, string> = {};
      if (before.lastId !== undefined) headers["last-event-id"] = before.lastId;
      const resumed = await request(`/chat/streams/${id}`, { headers });
      assert.equal(resumed.status, 200, `trial ${trial}`);
      const reader = resumed.body!.getReader();
      const parts = [before.bytes];
      const first = await reader.read();
      if (!first.done) parts.push(first.value);
      gate.allow(Infinity);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parts.push(value);
      }
      const stitched = concat(parts);
      const events = decodeAll(stitched);
      assert.deepEqual(
        events.map((e) => e.id),
        events.map((_, i) => String(i + 1)),
        `trial ${trial}: ids`,
      );
      assert.deepEqual(withoutIds(stitched), fixture, `trial ${trial}: bytes`);
      assert.deepEqual(await sdkOracle([stitched]), oracle, `trial ${trial}: the SDK's view`);
    }
    // The client left every time, and every answer was still read to its end (the default
    // for a resumable stream), with the whole usage.
    await eventually(() => stats.records.length === trials + 1, "the stats records");
    const usage = await expectedUsage("default");
    for (const record of stats.records) {
      assert.equal(record.outcome, "ok");
      assert.deepEqual(record.usage, usage);
    }
  } finally {
    gate.allow(Infinity);
    kv.close();
  }
});

Deno.test("a resumable /v1/messages stream can still be told to abort when its client leaves", async () => {
  const { kv, gate, stats, request } = await resumeApp();
  try {
    const response = await request("/v1/messages", {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-sluice-resumable": "true",
        "x-sluice-on-disconnect": "abort",
      },
      body: messagesBody(),
    });
    const id = response.headers.get("x-sluice-stream-id")!;
    const before = wholeEvents(await readThenCut(response, 600));
    await eventually(() => stats.records.length === 1, "the stats record");
    assert.equal(stats.records[0].outcome, "client_aborted");
    assert.ok(stats.records[0].usage.input_tokens > 0);
    const rest = new Uint8Array(
      await (await request(`/chat/streams/${id}?after=${before.lastId}`)).arrayBuffer(),
    );
    const events = decodeAll(concat([before.bytes, rest]));
    assert.deepEqual(events.map((e) => e.id), events.map((_, i) => String(i + 1)));
    assert.equal(events.at(-1)!.event, "error");
    assert.equal(JSON.parse(events.at(-1)!.data).error.message, ABORTED_MESSAGE);
    assert.equal(events.some((e) => e.event === "message_stop"), false);
  } finally {
    gate.allow(Infinity);
    kv.close();
  }
});

Deno.test("x-sluice-resumable is refused or ignored where it cannot apply", async (t) => {
  const { kv, request } = await resumeApp();
  const send = (headers: Record<string, string>, init: { key?: string; stream?: boolean } = {}) =>
    request("/v1/messages", {
      method: "POST",
      key: init.key,
      headers: { "content-type": "application/json", ...headers },
      body: messagesBody(undefined, init.stream ?? true),
    });
  try {
    await t.step("a value that is not a yes or a no is a 400 in Anthropic's shape", async () => {
      const refused = await send({ "x-sluice-resumable": "maybe" });
      assert.equal(refused.status, 400);
      const body = await refused.json();
      assert.equal(body.type, "error");
      assert.equal(body.error.type, "invalid_request_error");
      assert.match(body.error.message, /x-sluice-resumable/);
    });

    await t.step("false is the upstream's bytes, with no stream id", async () => {
      const response = await send({ "x-sluice-resumable": "false" });
      assert.equal(response.headers.get("x-sluice-stream-id"), null);
      assert.deepEqual(
        new Uint8Array(await response.arrayBuffer()),
        await readFixture("default.sse"),
      );
    });

    await t.step("a request that does not stream is answered as usual", async () => {
      const response = await send({ "x-sluice-resumable": "true" }, { stream: false });
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("x-sluice-stream-id"), null);
      assert.equal((await response.json()).type, "message");
    });

    await t.step(
      "another key cannot resume the stream (404), a bad Last-Event-ID is a 400",
      async () => {
        const response = await send({ "x-sluice-resumable": "true" });
        const id = response.headers.get("x-sluice-stream-id")!;
        await response.arrayBuffer();
        const own = await request(`/chat/streams/${id}`);
        assert.equal(own.status, 200);
        assert.deepEqual(new Uint8Array(await own.arrayBuffer()).length > 0, true);
        const other = await request(`/chat/streams/${id}`, { key: "key-two" });
        assert.equal(other.status, 404);
        assert.equal((await other.json()).error.type, "not_found_error");
        const bad = await request(`/chat/streams/${id}`, { headers: { "last-event-id": "x1" } });
        assert.equal(bad.status, 400);
        assert.equal((await bad.json()).error.type, "invalid_request_error");
      },
    );
  } finally {
    kv.close();
  }

  await t.step("without Deno KV, asking for it is a 503", async () => {
    const app = await replayApp();
    const response = await app.request("/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json", "x-sluice-resumable": "true" },
      body: messagesBody(),
    });
    assert.equal(response.status, 503);
    assert.equal((await response.json()).error.type, "api_error");
  });
});

Deno.test("kill -9 mid-answer of a resumable /v1/messages stream: the buffered events, an error event, and the usage reached", async (t) => {
  const instances = await twoInstances({
    SLUICE_REPLAY_TOKENS_PER_SECOND: "20",
    SLUICE_RESUME_STALE_MS: "500",
  });
  try {
    const response = await fetch(`${instances.a.url}/v1/messages`, {
      method: "POST",
      headers: {
        "x-api-key": "key-one",
        "content-type": "application/json",
        "x-sluice-resumable": "true",
      },
      body: messagesBody(),
    });
    const id = response.headers.get("x-sluice-stream-id")!;
    const reader = response.body!.getReader();
    const { events: got } = await readEvents(reader, 4);
    await new Promise((r) => setTimeout(r, 100)); // the writer's commit of what A sent
    Deno.kill(instances.a.pid, "SIGKILL");
    await reader.cancel().catch(() => {});
    const resumed = await fetch(`${instances.b.url}/chat/streams/${id}`, {
      headers: { "x-api-key": "key-one", "last-event-id": got[3].id! },
    });
    assert.equal(resumed.status, 200);
    const rest = new Uint8Array(await resumed.arrayBuffer());
    const events = [...got.slice(0, 4), ...decodeAll(rest)];

    await t.step(
      "the events are numbered without a gap, and end with the cut's error event",
      () => {
        assert.deepEqual(events.map((e) => e.id), events.map((_, i) => String(i + 1)));
        assert.equal(events[0].event, "message_start");
        assert.equal(events.some((e) => e.event === "message_stop"), false);
        assert.equal(events.at(-1)!.event, "error");
        assert.equal(JSON.parse(events.at(-1)!.data).error.message, CUT_MESSAGE);
      },
    );

    await t.step("the SDK sees an api_error, not a finished message", async () => {
      const bytes = encoder.encode(
        events.map((e) => `event: ${e.event}\ndata: ${e.data}\n\n`).join(""),
      );
      const seen = await sdkOracle([bytes]);
      assert.equal(seen.finalMessage, null);
      assert.equal(seen.error?.message.includes(CUT_MESSAGE), true);
    });

    await t.step(
      "the stats record it incomplete, under /v1/messages, with the input tokens reached",
      async () => {
        const usage = await expectedUsage("default");
        await eventually(async () => {
          const recent = await (await fetch(`${instances.b.url}/stats/recent`, {
            headers: { authorization: "Bearer admin-key" },
          })).json();
          return recent.requests?.some((
            r: { outcome: string; endpoint: string; tokens: { input: number } },
          ) =>
            r.outcome === "incomplete" && r.endpoint === "/v1/messages" &&
            r.tokens.input === usage.input_tokens
          ) ?? false;
        }, "the incomplete record");
      },
    );
  } finally {
    await instances.close();
  }
});
