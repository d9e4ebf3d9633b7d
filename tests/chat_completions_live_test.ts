/**
 * `POST /v1/chat/completions` in live mode, against a fake OpenAI-compatible upstream on
 * 127.0.0.1: the real `openai` SDK gets through sluice what it gets from the upstream directly,
 * the upstream sees the caller's body byte for byte with the server's key (never the gateway
 * key), its errors come back unchanged, and /stats records what the chunks said.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import type { RecentEntry } from "../lib/stats/recent.ts";
import type { StatsReport } from "../lib/stats/report.ts";
import { createKvStats } from "../lib/stats/kv_stats.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import {
  liveApp,
  type SeenRequest,
  serveOnLoopback,
  sseResponse,
  startFakeUpstream,
  TEST_SERVER_KEY,
  testConfig,
} from "./helpers.ts";
import { openaiClient } from "./openai_support.ts";

const GATEWAY_KEY = "gw-key-for-openai-clients";
const ADMIN_KEY = "admin-key-for-stats";
const MODEL = "claude-haiku-4-5";
const TEXT = ["The", " tide", " turns", " at", " dusk", "."];
const USAGE = { prompt_tokens: 31, completion_tokens: 9, total_tokens: 40 };

/** The stream the fake upstream sends, as the OpenAI-compatible endpoint frames it. */
function upstreamStream(includeUsage: boolean): string {
  const base = { id: "chatcmpl-fake01", object: "chat.completion.chunk", created: 1, model: MODEL };
  const choice = (delta: Record<string, unknown>, finish: string | null = null) => ({
    ...base,
    choices: [{ index: 0, delta, finish_reason: finish }],
  });
  const chunks = [
    choice({ role: "assistant", content: "" }),
    ...TEXT.map((content) => choice({ content })),
    choice({}, "stop"),
    ...(includeUsage ? [{ ...base, choices: [], usage: USAGE }] : []),
  ];
  return chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`).join("") + "data: [DONE]\n\n";
}

/** A whole answer, with formatting of its own, so byte-for-byte is visible. */
const COMPLETION = `{"id": "chatcmpl-fake02", "object": "chat.completion", "created": 1,
  "model": "${MODEL}", "choices": [{"index": 0, "message": {"role": "assistant",
  "content": "${TEXT.join("")}"}, "finish_reason": "stop"}], "usage": ${JSON.stringify(USAGE)}}`;

/** OpenAI's error shape, as the compatible endpoint answers a bad request. */
const UPSTREAM_ERROR = JSON.stringify({
  error: {
    message: "model: no such model",
    type: "invalid_request_error",
    param: "model",
    code: "model_not_found",
  },
});

/**
 * A fake OpenAI-compatible upstream. It streams in 7-byte pieces (so chunks cross event
 * boundaries) unless `whole`: under Deno 2.5, a request after a stream sent in many pieces on the
 * same pooled connection keeps the fake's shutdown waiting ~90 s (/v1/messages alike).
 */
function fakeCompatibleUpstream(options: { whole?: boolean } = {}) {
  return startFakeUpstream((_request, seen: SeenRequest) => {
    if (seen.path !== "/v1/chat/completions") return new Response("no", { status: 404 });
    const body = JSON.parse(seen.body);
    if (body.model === "no-such-model") {
      return new Response(UPSTREAM_ERROR, {
        status: 400,
        headers: { "content-type": "application/json", "request-id": "req_upstream_400" },
      });
    }
    if (body.model === "echo-the-key") {
      const echo = { error: { message: `bad key ${seen.headers.get("authorization")}` } };
      return Response.json(echo, { status: 401 });
    }
    if (body.stream) {
      const bytes = new TextEncoder().encode(upstreamStream(!!body.stream_options?.include_usage));
      return sseResponse(bytes, options.whole ? {} : { chunkSize: 7 });
    }
    return new Response(COMPLETION, {
      headers: { "content-type": "application/json", "request-id": "req_fake_json" },
    });
  });
}

/** An OpenAI client for sluice's app called in-process (no sockets). */
const client = (url: string, apiKey: string) =>
  new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0 });

/** What the fake upstream was sent, minus what naturally differs between two clients' calls. */
function credentialsOf(seen: SeenRequest) {
  const values = [...seen.headers.values()].join("\n");
  return {
    authorization: seen.headers.get("authorization"),
    carriesGatewayKey: values.includes(GATEWAY_KEY),
  };
}

Deno.test("the OpenAI SDK gets the upstream's chunks through sluice, which forwards with the server's key", async (t) => {
  const upstream = fakeCompatibleUpstream();
  const stats = memorySink();
  const sluice = serveOnLoopback(
    liveApp(upstream.url, { SLUICE_API_KEYS: GATEWAY_KEY }, { stats }),
  );
  const params = {
    model: MODEL,
    stream: true as const,
    stream_options: { include_usage: true },
    messages: [{ role: "user" as const, content: "When does the tide turn?" }],
  };
  const collect = async (url: string, key: string) => {
    const { client, close } = openaiClient(url, key);
    try {
      const chunks = [];
      for await (const chunk of await client.chat.completions.create(params)) chunks.push(chunk);
      return chunks;
    } finally {
      close();
    }
  };
  try {
    await t.step("the same chunks as from the upstream directly", async () => {
      const direct = await collect(upstream.url, "direct-key");
      const sentDirect = upstream.requests.at(-1)!;
      const through = await collect(sluice.url, GATEWAY_KEY);
      const sentThrough = upstream.requests.at(-1)!;
      assert.equal(direct.map((c) => c.choices[0]?.delta.content ?? "").join(""), TEXT.join(""));
      assert.deepEqual(through, direct);
      assert.equal(sentThrough.body, sentDirect.body, "the SDK's body, byte for byte");
      assert.equal(sentThrough.path, "/v1/chat/completions");
      for (const name of ["x-stainless-lang", "x-stainless-package-version", "user-agent"]) {
        assert.equal(sentThrough.headers.get(name), sentDirect.headers.get(name), name);
      }
      assert.deepEqual(credentialsOf(sentThrough), {
        authorization: `Bearer ${TEST_SERVER_KEY}`,
        carriesGatewayKey: false,
      });
    });
    await t.step("the request is recorded with its TTFT, tokens and finish reason", async () => {
      await eventually(() => stats.records.length === 1, "the stats record");
      const [record] = stats.records;
      assert.equal(record.endpoint, "/v1/chat/completions");
      assert.equal(record.streaming, true);
      assert.equal(record.outcome, "ok");
      assert.equal(record.status, 200);
      assert.equal(record.model, MODEL);
      assert.equal(record.stopReason, "stop");
      assert.equal(typeof record.ttftMs, "number");
      assert.ok(record.ttftMs! >= 0 && record.ttftMs! <= record.totalMs);
      assert.equal(record.usage.input_tokens, USAGE.prompt_tokens);
      assert.equal(record.usage.output_tokens, USAGE.completion_tokens);
      assert.deepEqual(record.events, {
        "chat.completion.chunk": TEXT.length + 3,
        done: 1,
      });
    });
  } finally {
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("sluice passes the caller's bytes both ways and never adds stream_options", async (t) => {
  const upstream = fakeCompatibleUpstream({ whole: true });
  const stats = memorySink();
  const app = liveApp(upstream.url, {}, { stats });
  const send = (body: string, search = "") =>
    app.request(`http://sluice.test/v1/chat/completions${search}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer caller-key" },
      body,
    });
  try {
    await t.step(
      "a streamed request: odd formatting and unknown fields reach the upstream",
      async () => {
        const raw = `{ "model":"${MODEL}",\n "stream" : true, "messages":[{"role":"developer",` +
          `"content":"x"},{"role":"user","content":"hi"}], "reasoning_effort":"high", ` +
          `"some_future_field": [1, {"a": null}] }`;
        const response = await send(raw, "?beta=true&x=%20y");
        assert.equal(response.status, 200);
        assert.match(response.headers.get("content-type")!, /^text\/event-stream/);
        assert.equal(await response.text(), upstreamStream(false));
        const seen = upstream.requests.at(-1)!;
        assert.equal(seen.body, raw);
        assert.equal(seen.search, "?beta=true&x=%20y");
        assert.equal(seen.headers.get("authorization"), `Bearer ${TEST_SERVER_KEY}`);
        await eventually(() => stats.records.length === 1, "the stats record");
        assert.deepEqual(stats.records[0].usage.output_tokens, 0, "no usage chunk, none recorded");
        assert.equal(typeof stats.records[0].ttftMs, "number");
      },
    );
    await t.step("a whole answer comes back unchanged, its usage recorded", async () => {
      const raw = JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }] });
      const response = await send(raw);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("request-id"), "req_fake_json");
      assert.equal(await response.text(), COMPLETION);
      assert.equal(upstream.requests.at(-1)!.body, raw);
      await eventually(() => stats.records.length === 2, "the second stats record");
      const record = stats.records[1];
      assert.equal(record.streaming, false);
      assert.equal(record.outcome, "ok");
      assert.equal(record.usage.input_tokens, USAGE.prompt_tokens);
      assert.equal(record.usage.output_tokens, USAGE.completion_tokens);
      assert.equal(record.stopReason, "stop");
    });
    await t.step("the upstream's own 400 comes back byte for byte", async () => {
      const response = await send(JSON.stringify({ model: "no-such-model", messages: [] }));
      assert.equal(response.status, 400);
      assert.equal(response.headers.get("request-id"), "req_upstream_400");
      assert.equal(await response.text(), UPSTREAM_ERROR);
      await eventually(() => stats.records.length === 3, "the third stats record");
      assert.equal(stats.records[2].outcome, "invalid_request_error");
    });
    await t.step(
      "an upstream error that echoes the server's key comes back without it",
      async () => {
        const response = await send(JSON.stringify({ model: "echo-the-key", messages: [] }));
        assert.equal(response.status, 401);
        const text = await response.text();
        assert.ok(!text.includes(TEST_SERVER_KEY), text);
        assert.match(text, /bad key Bearer \[redacted\]/);
      },
    );
    await t.step("the OpenAI SDK reads that error's code and param", async () => {
      const error = await client("http://unused.test", "k").withOptions({
        fetch: async (input, init) => await app.request(new Request(input, init)),
      }).chat.completions.create({ model: "no-such-model", messages: [] }).then(
        () => null,
        (e) => e,
      );
      assert.ok(error instanceof OpenAI.BadRequestError, `a BadRequestError, got ${error}`);
      assert.equal(error.code, "model_not_found");
      assert.equal(error.param, "model");
    });
  } finally {
    await upstream.close();
  }
});

/** Three events of the upstream's stream (and, `inside`, part of the fourth), then a reset. */
function cutStream(inside: boolean): ReadableStream<Uint8Array> {
  const text = upstreamStream(false);
  let end = 0;
  for (let i = 0; i < 3; i++) end = text.indexOf("\n\n", end) + 2;
  if (inside) end += 20;
  let sent = false;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent) return controller.error(new TypeError("connection reset by peer"));
      sent = true;
      controller.enqueue(new TextEncoder().encode(text.slice(0, end)));
    },
  });
}

Deno.test("a stream cut mid-way never looks finished to the OpenAI SDK", async (t) => {
  const stats = memorySink();
  // A fake fetch rather than the loopback server: a server whose body fails logs the failure.
  const app = createApp({
    config: testConfig({ ANTHROPIC_API_KEY: TEST_SERVER_KEY }),
    upstream: createUpstream({
      mode: "live",
      apiKey: TEST_SERVER_KEY,
      baseURL: "http://upstream.test",
      maxRetries: 0,
      fetch: async (input, init) => {
        const { model } = await new Request(input, init).json();
        return new Response(cutStream(model === "cut-inside-an-event"), {
          headers: { "content-type": "text/event-stream" },
        });
      },
    }),
    logger: silentLogger,
    stats,
  });
  const sdk = client("http://sluice.test", "k").withOptions({
    fetch: async (input, init) => await app.request(new Request(input, init)),
  });
  const read = async (model: string) => {
    const stream = await sdk.chat.completions.create({ model, stream: true, messages: [] });
    let text = "";
    const error = await (async () => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
    })().then(() => null, (e) => e);
    return { text, error };
  };
  await t.step("between events: sluice's error chunk, raised as an APIError", async () => {
    const { text, error } = await read("cut-between-events");
    assert.ok(error instanceof OpenAI.APIError, `an APIError, got ${error}`);
    assert.match(error.message, /dropped mid-stream/);
    assert.equal(text, TEXT.slice(0, 2).join(""));
  });
  await t.step(
    "inside an event: the cut event is ended first, and the SDK fails on it",
    async () => {
      const { text, error } = await read("cut-inside-an-event");
      assert.ok(error instanceof Error, "the SDK raises");
      assert.equal(text, TEXT.slice(0, 2).join(""));
    },
  );
  await t.step("both are recorded as incomplete", async () => {
    await eventually(() => stats.records.length === 2, "two stats records");
    assert.deepEqual(stats.records.map((r) => r.outcome), ["incomplete", "incomplete"]);
  });
});

Deno.test("/stats and /metrics count chat completions with their TTFT and tokens", async () => {
  const upstream = fakeCompatibleUpstream();
  const kv = await Deno.openKv(":memory:");
  const stats = createKvStats({ kv });
  const app = liveApp(upstream.url, { SLUICE_API_KEYS: GATEWAY_KEY, SLUICE_ADMIN_KEY: ADMIN_KEY }, {
    stats,
  });
  try {
    const sdk = client("http://sluice.test", GATEWAY_KEY).withOptions({
      fetch: async (input, init) => await app.request(new Request(input, init)),
    });
    const stream = await sdk.chat.completions.create({
      model: MODEL,
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: "user", content: "hi" }],
    });
    for await (const _ of stream) { /* read to the end */ }
    const admin = { authorization: `Bearer ${ADMIN_KEY}` };
    // The record reaches the store off the response path: wait until it is there.
    for (let i = 0; i < 200; i++) {
      await stats.flush();
      if ((await stats.recent(1)).length > 0) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    const report = await (await app.request("http://sluice.test/stats", { headers: admin }))
      .json() as StatsReport;
    const view = report.by_endpoint["/v1/chat/completions"];
    assert.ok(view, `endpoints: ${Object.keys(report.by_endpoint)}`);
    assert.equal(view.requests.total, 1);
    assert.equal(view.requests.streaming, 1);
    assert.equal(view.tokens.input, USAGE.prompt_tokens);
    assert.equal(view.tokens.output, USAGE.completion_tokens);
    assert.equal(view.ttft_ms.streaming.count, 1);
    const { requests } = await (await app.request("http://sluice.test/stats/recent", {
      headers: admin,
    })).json() as { requests: RecentEntry[] };
    assert.equal(requests[0].endpoint, "/v1/chat/completions");
    assert.equal(requests[0].outcome, "ok", "read to [DONE]: whole, however the client closed");
    assert.equal(typeof requests[0].ttft_ms, "number");
    const metrics = await (await app.request("http://sluice.test/metrics", { headers: admin }))
      .text();
    assert.match(
      metrics,
      /sluice_requests_total\{[^}]*endpoint="\/v1\/chat\/completions"[^}]*\} 1/,
    );
  } finally {
    kv.close();
    await upstream.close();
  }
});

async function eventually(predicate: () => boolean, what: string) {
  for (let i = 0; i < 200 && !predicate(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(predicate(), `timed out waiting for ${what}`);
}

Deno.test("an upstream that cannot be reached is a 502 in OpenAI's shape", async () => {
  const gone = startFakeUpstream(() => new Response());
  await gone.close();
  const app = liveApp(gone.url);
  const response = await app.request("http://sluice.test/v1/chat/completions", {
    method: "POST",
    body: JSON.stringify({ model: MODEL, messages: [] }),
  });
  assert.equal(response.status, 502);
  const json = await response.json();
  assert.deepEqual(Object.keys(json), ["error"]);
  assert.equal(json.error.type, "api_error");
  assert.match(json.error.message, /could not connect/);
});
