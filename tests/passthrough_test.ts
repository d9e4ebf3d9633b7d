/**
 * Transparency: what the API accepts reaches it through sluice as the caller sent it (body,
 * path, query string, the API's headers), and every other `/v1/*` call (batches, files, models,
 * endpoints sluice has never heard of) is forwarded with its body streamed both ways.
 */
import assert from "node:assert/strict";
import Anthropic, { toFile } from "@anthropic-ai/sdk";
import {
  type FakeUpstream,
  liveApp,
  ownConnections,
  type SeenRequest,
  serveOnLoopback,
  sseResponse,
  startFakeUpstream,
  TEST_SERVER_KEY,
} from "./helpers.ts";
import { readFixture } from "./helpers.ts";

const GATEWAY_KEY = "sk-gateway-caller";

/** Request shapes the API accepts today, each with the betas a real client would send. */
function conformanceBodies(): [string, Record<string, unknown>][] {
  const base = { model: "claude-sonnet-5-5", max_tokens: 1024 };
  const user = { role: "user", content: "Hello" };
  const image = btoa(String.fromCharCode(...new Uint8Array(64).map((_, i) => i)));
  return [
    ["a system message after the first user turn", {
      ...base,
      messages: [user, { role: "system", content: "Answer briefly." }, user],
    }],
    ["adaptive thinking with omitted display", {
      ...base,
      max_tokens: 128000,
      thinking: { type: "adaptive", display: "omitted" },
      messages: [user],
    }],
    ["context_management", {
      ...base,
      context_management: { edits: [{ type: "clear_tool_uses_20250919" }] },
      messages: [user],
    }],
    ["output_config with effort", { ...base, output_config: { effort: "low" }, messages: [user] }],
    ["mcp_servers", {
      ...base,
      mcp_servers: [{ type: "url", url: "https://mcp.example/sse", name: "example" }],
      messages: [user],
    }],
    ["container", { ...base, container: "container_011CPR5CNjB747bTd36fQLFk", messages: [user] }],
    ["service_tier", { ...base, service_tier: "auto", messages: [user] }],
    ["top-level cache_control", {
      ...base,
      cache_control: { type: "ephemeral" },
      messages: [user],
    }],
    ["metadata and a system prompt as blocks", {
      ...base,
      metadata: { user_id: "user-123" },
      system: [{ type: "text", text: "You are terse.", cache_control: { type: "ephemeral" } }],
      messages: [user],
    }],
    ["a document block", {
      ...base,
      messages: [{
        role: "user",
        content: [
          {
            type: "document",
            source: { type: "text", media_type: "text/plain", data: "The grass is green." },
            citations: { enabled: true },
          },
          { type: "text", text: "What colour is the grass?" },
        ],
      }],
    }],
    ["a base64 image", {
      ...base,
      messages: [{
        role: "user",
        content: [
          { type: "image", source: { type: "base64", media_type: "image/png", data: image } },
          { type: "text", text: "Describe it." },
        ],
      }],
    }],
    ["a field the API adds tomorrow", { ...base, future_parameter: { x: 1 }, messages: [user] }],
  ];
}

/** A body of about `bytes` bytes: a text block that long (the API's limit is 32 MB). */
function bodyOfSize(bytes: number): string {
  const head =
    '{"model":"claude-sonnet-5-5","max_tokens":16,"messages":[{"role":"user","content":"';
  const tail = '"}],"stream":true}';
  return head + "a".repeat(bytes - head.length - tail.length) + tail;
}

Deno.test("request shapes the API accepts reach it byte for byte, with the query string and the API's headers", async (t) => {
  const sse = await readFixture("three-words.sse");
  const upstream = startFakeUpstream((req) =>
    new URL(req.url).searchParams.has("stream")
      ? sseResponse(sse)
      : Response.json({ type: "message", content: [], usage: {} })
  );
  const app = liveApp(upstream.url);
  const headers = {
    "content-type": "application/json",
    "x-api-key": GATEWAY_KEY,
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-1m-2025-08-07",
    "x-stainless-lang": "js",
    "x-stainless-package-version": "0.70.0",
    "x-stainless-retry-count": "3",
    "idempotency-key": "idem-123",
    "user-agent": "claude-cli/2.1.332 (external, cli)",
    cookie: "session=secret",
    "x-forwarded-for": "10.9.8.7",
  };
  try {
    const cases = [...conformanceBodies(), ["a 20 MB body", null] as const];
    for (const [name, body] of cases) {
      await t.step(name, async () => {
        const text = body ? JSON.stringify(body) : bodyOfSize(20 * 1024 * 1024);
        const before = upstream.requests.length;
        const response = await app.request("/v1/messages?beta=true", {
          method: "POST",
          headers,
          body: text,
        });
        assert.equal(response.status, 200, await response.clone().text());
        await response.body?.cancel();
        assert.equal(upstream.requests.length, before + 1);
        const seen: SeenRequest = upstream.requests.at(-1)!;
        assert.equal(seen.path, "/v1/messages");
        assert.equal(seen.search, "?beta=true");
        assert.equal(seen.body.length, text.length);
        assert.ok(seen.body === text, "the body arrived byte for byte");
        for (
          const name of [
            "anthropic-version",
            "anthropic-beta",
            "x-stainless-lang",
            "x-stainless-package-version",
            "idempotency-key",
            "user-agent",
          ] as const
        ) {
          assert.equal(seen.headers.get(name), headers[name], name);
        }
        // The caller's credentials and connection headers stay with sluice.
        assert.equal(seen.headers.get("cookie"), null);
        assert.equal(seen.headers.get("x-forwarded-for"), null);
        assert.equal(seen.headers.get("x-stainless-retry-count"), "0", "sluice's own attempt");
        const credentials = `${seen.headers.get("x-api-key")} ${seen.headers.get("authorization")}`;
        assert.ok(credentials.includes(TEST_SERVER_KEY), "the server's key went upstream");
        assert.ok(!credentials.includes(GATEWAY_KEY), "the caller's key did not");
      });
    }
  } finally {
    await upstream.close();
  }
});

Deno.test("the upstream's own 400 for a request it refuses comes back unchanged", async () => {
  const refusal = {
    type: "error",
    error: { type: "invalid_request_error", message: "messages.0.role: unexpected value" },
    request_id: "req_upstream_400",
  };
  const upstream = startFakeUpstream(() =>
    Response.json(refusal, { status: 400, headers: { "request-id": "req_upstream_400" } })
  );
  const app = liveApp(upstream.url);
  try {
    const response = await app.request("/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "m", messages: [{ role: "robot", content: "hi" }] }),
    });
    assert.equal(response.status, 400);
    assert.equal(response.headers.get("request-id"), "req_upstream_400");
    assert.deepEqual(await response.json(), refusal);
  } finally {
    await upstream.close();
  }
});

/** A fake Batches API: create, list, get, cancel, delete, and results sent line by line. */
function fakeBatches(resultsGate: Promise<void>, self: () => string) {
  const batch = (status: string) => ({
    id: "msgbatch_01",
    type: "message_batch",
    processing_status: status,
    request_counts: { processing: 0, succeeded: 2, errored: 0, canceled: 0, expired: 0 },
    ended_at: null,
    created_at: "2026-12-01T00:00:00Z",
    expires_at: "2026-12-02T00:00:00Z",
    archived_at: null,
    cancel_initiated_at: null,
    results_url: `${self()}/v1/messages/batches/msgbatch_01/results`,
  });
  const lines = [0, 1].map((i) =>
    JSON.stringify({
      custom_id: `req-${i}`,
      result: {
        type: "succeeded",
        message: {
          id: `msg_${i}`,
          type: "message",
          role: "assistant",
          model: "claude-sonnet-5-5",
          content: [{ type: "text", text: `answer ${i}` }],
          stop_reason: "end_turn",
          stop_sequence: null,
          usage: { input_tokens: 3, output_tokens: 2 },
        },
      },
    }) + "\n"
  );
  return (req: Request, seen: SeenRequest): Response => {
    const route = `${req.method} ${seen.path}`;
    switch (route) {
      case "POST /v1/messages/batches":
        return Response.json(batch("in_progress"));
      case "GET /v1/messages/batches":
        return Response.json({
          data: [batch("ended")],
          has_more: false,
          first_id: "msgbatch_01",
          last_id: "msgbatch_01",
        });
      case "GET /v1/messages/batches/msgbatch_01":
        return Response.json(batch("ended"));
      case "POST /v1/messages/batches/msgbatch_01/cancel":
        return Response.json(batch("canceling"));
      case "DELETE /v1/messages/batches/msgbatch_01":
        return Response.json({ id: "msgbatch_01", type: "message_batch_deleted" });
      case "GET /v1/messages/batches/msgbatch_01/results": {
        const encoder = new TextEncoder();
        let sent = 0;
        // The second line waits until the client has the first: a buffering gateway would
        // never deliver it, and the test's deadline would fail.
        const body = new ReadableStream<Uint8Array>({
          async pull(controller) {
            if (sent === 1) await resultsGate;
            if (sent < lines.length) controller.enqueue(encoder.encode(lines[sent++]));
            else controller.close();
          },
        });
        return new Response(body, { headers: { "content-type": "application/binary" } });
      }
    }
    return Response.json({ type: "error", error: { type: "not_found_error", message: route } }, {
      status: 404,
    });
  };
}

/** Rejects if `promise` has not settled within `ms`: a deadline for a step that could hang. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

Deno.test("the official SDK's batches calls work through sluice, results streamed line by line", async () => {
  let openGate!: () => void;
  const gate = new Promise<void>((resolve) => (openGate = resolve));
  const upstream: FakeUpstream = startFakeUpstream(fakeBatches(gate, () => upstream.url));
  const sluice = serveOnLoopback(liveApp(upstream.url));
  // Its own pool, closed first: Deno 2.5's server shutdown waits ~90 s on kept-alive connections.
  const http = ownConnections();
  const client = new Anthropic({
    apiKey: GATEWAY_KEY,
    baseURL: sluice.url,
    maxRetries: 0,
    fetch: http.fetch,
  });
  try {
    const created = await client.messages.batches.create({
      requests: [0, 1].map((i) => ({
        custom_id: `req-${i}`,
        params: {
          model: "claude-sonnet-5-5",
          max_tokens: 16,
          messages: [{ role: "user", content: `q${i}` }],
        },
      })),
    });
    assert.equal(created.id, "msgbatch_01");
    const createdBody = JSON.parse(upstream.requests.at(-1)!.body);
    assert.equal(createdBody.requests.length, 2);

    const page = await client.messages.batches.list({ limit: 5 });
    assert.deepEqual(page.data.map((b) => b.id), ["msgbatch_01"]);
    assert.equal(upstream.requests.at(-1)!.search, "?limit=5");
    const retrieved = await client.messages.batches.retrieve("msgbatch_01");
    assert.equal(retrieved.processing_status, "ended");
    // The results URL names sluice, not the upstream the caller has no key for.
    assert.equal(retrieved.results_url, `${sluice.url}/v1/messages/batches/msgbatch_01/results`);
    assert.equal(
      (await client.messages.batches.cancel("msgbatch_01")).processing_status,
      "canceling",
    );

    // Results: read the JSONL body directly, to see the first line before the second is sent.
    const response = await http.fetch(`${sluice.url}/v1/messages/batches/msgbatch_01/results`, {
      headers: { "x-api-key": GATEWAY_KEY },
    });
    assert.equal(response.status, 200);
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    const first = await within(reader.read(), 5_000, "the first result line");
    assert.equal(JSON.parse(first.value!).custom_id, "req-0");
    openGate();
    let rest = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      rest += value;
    }
    assert.equal(JSON.parse(rest).custom_id, "req-1");

    // And through the SDK's own JSONL decoder.
    const ids: string[] = [];
    for await (const line of await client.messages.batches.results("msgbatch_01")) {
      ids.push(line.custom_id);
    }
    assert.deepEqual(ids, ["req-0", "req-1"]);

    const deleted = await client.messages.batches.delete("msgbatch_01");
    assert.equal(deleted.type, "message_batch_deleted");
    for (const seen of upstream.requests) {
      assert.ok(!`${seen.headers.get("x-api-key")}`.includes(GATEWAY_KEY));
    }
  } finally {
    http.close();
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("files upload as multipart and download streamed through sluice, byte for byte", async () => {
  const content = new Uint8Array(300_000).map((_, i) => (i * 7) % 256);
  let uploaded: { type: string; bytes: Uint8Array } | undefined;
  const upstream = startFakeUpstream(async (req, seen) => {
    if (req.method === "POST" && seen.path === "/v1/files") {
      const form = await req.formData();
      const file = form.get("file") as File;
      uploaded = { type: req.headers.get("content-type")!, bytes: await file.bytes() };
      return Response.json({
        id: "file_01",
        type: "file",
        filename: file.name,
        mime_type: file.type,
        size_bytes: file.size,
        created_at: "2026-12-01T00:00:00Z",
        downloadable: true,
      });
    }
    if (req.method === "GET" && seen.path === "/v1/files/file_01/content") {
      return new Response(content, {
        headers: {
          "content-type": "application/octet-stream",
          "content-disposition": 'attachment; filename="data.bin"',
        },
      });
    }
    if (req.method === "DELETE" && seen.path === "/v1/files/file_01") {
      return Response.json({ id: "file_01", type: "file_deleted" });
    }
    return Response.json({ data: [], has_more: false, first_id: null, last_id: null });
  }, { readBodies: false });
  const sluice = serveOnLoopback(liveApp(upstream.url));
  // Its own pool, closed first: Deno 2.5's server shutdown waits ~90 s on kept-alive connections.
  const http = ownConnections();
  const client = new Anthropic({
    apiKey: GATEWAY_KEY,
    baseURL: sluice.url,
    maxRetries: 0,
    fetch: http.fetch,
  });
  try {
    const file = await client.beta.files.upload({
      file: await toFile(content, "data.bin", { type: "application/octet-stream" }),
    });
    assert.equal(file.id, "file_01");
    assert.equal(file.size_bytes, content.length);
    assert.match(uploaded!.type, /^multipart\/form-data; boundary=/);
    assert.deepEqual(uploaded!.bytes, content);
    const seenUpload = upstream.requests.find((r) => r.path === "/v1/files")!;
    assert.equal(seenUpload.headers.get("x-stainless-lang"), "js");

    const download = await client.beta.files.download("file_01");
    assert.equal(download.headers.get("content-disposition"), 'attachment; filename="data.bin"');
    assert.deepEqual(new Uint8Array(await download.arrayBuffer()), content);
    assert.equal((await client.beta.files.delete("file_01")).type, "file_deleted");
    await client.beta.files.list();
  } finally {
    http.close();
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("a path sluice has never heard of is forwarded with its method, query and body", async () => {
  const upstream = startFakeUpstream((req) =>
    Response.json({ echoed: req.method }, { headers: { "request-id": "req_new" } })
  );
  const app = liveApp(upstream.url);
  try {
    const response = await app.request("/v1/skills/sk_1/versions?limit=3&order=desc", {
      method: "PATCH",
      headers: { "content-type": "application/json", "anthropic-beta": "skills-2025-10-02" },
      body: '{"display_title":"x"}',
    });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("request-id"), "req_new");
    assert.deepEqual(await response.json(), { echoed: "PATCH" });
    const seen = upstream.requests.at(-1)!;
    assert.equal(seen.path, "/v1/skills/sk_1/versions");
    assert.equal(seen.search, "?limit=3&order=desc");
    assert.equal(seen.body, '{"display_title":"x"}');
    assert.equal(seen.headers.get("anthropic-beta"), "skills-2025-10-02");
  } finally {
    await upstream.close();
  }
});

Deno.test("encoded slashes and dots in a forwarded path are refused before any upstream call", async () => {
  const upstream = startFakeUpstream(() => Response.json({}));
  const app = liveApp(upstream.url);
  try {
    for (const path of ["/v1/files/a%2Fb/content", "/v1/models/%5c", "/v1/models/a%2E"]) {
      const response = await app.request(path);
      assert.equal(response.status, 400, path);
      assert.equal((await response.json()).error.type, "invalid_request_error");
    }
    // Dot segments are resolved by the URL parser before any route sees them; what they
    // resolve to here (`/v1/`) has no endpoint, and is not sent upstream with the server's key.
    for (const path of ["/v1/models/..", "/v1/models/%2e%2e", "/v1/x/../../v1/"]) {
      const response = await app.request(path);
      assert.equal(response.status, 404, path);
      assert.equal((await response.json()).error.type, "not_found_error");
    }
    assert.equal(upstream.requests.length, 0);
  } finally {
    await upstream.close();
  }
});

Deno.test("an upload over SLUICE_MAX_FILE_BYTES is refused with 413, declared or streamed", async () => {
  const upstream = startFakeUpstream(async (req) => {
    await req.arrayBuffer().catch(() => {});
    return Response.json({ id: "file_x" });
  }, { readBodies: false });
  const sluice = serveOnLoopback(liveApp(upstream.url, { SLUICE_MAX_FILE_BYTES: "1000" }));
  try {
    const declared = await fetch(`${sluice.url}/v1/files`, {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: new Uint8Array(2000),
    });
    assert.equal(declared.status, 413);
    assert.equal((await declared.json()).error.type, "request_too_large");
    assert.equal(upstream.requests.length, 0, "a declared size over the limit costs no call");

    const streamed = await fetch(`${sluice.url}/v1/files`, {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: ReadableStream.from([new Uint8Array(600), new Uint8Array(600)]),
    });
    assert.equal(streamed.status, 413);
    assert.match((await streamed.json()).error.message, /SLUICE_MAX_FILE_BYTES/);

    const small = await fetch(`${sluice.url}/v1/files`, {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: new Uint8Array(500),
    });
    assert.equal(small.status, 200);
    await small.body?.cancel();
  } finally {
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("forwarded calls are recorded in stats by endpoint, ids left out of the label", async () => {
  const upstream = startFakeUpstream(() => Response.json({ id: "x" }));
  const { memorySink } = await import("../lib/stats/request_summary.ts");
  const { createApp } = await import("../lib/app.ts");
  const { createUpstream } = await import("../lib/proxy/upstream.ts");
  const { silentLogger } = await import("../lib/log.ts");
  const { testConfig } = await import("./helpers.ts");
  const sink = memorySink();
  const app = createApp({
    config: testConfig({ ANTHROPIC_API_KEY: TEST_SERVER_KEY }),
    upstream: createUpstream({
      mode: "live",
      apiKey: TEST_SERVER_KEY,
      baseURL: upstream.url,
      maxRetries: 0,
    }),
    logger: silentLogger,
    stats: sink,
  });
  try {
    for (const path of ["/v1/files/file_a", "/v1/files/file_b", "/v1/models"]) {
      await (await app.request(path)).body?.cancel();
    }
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.deepEqual(sink.records.map((r) => r.endpoint), [
      "GET:/v1/files/:id",
      "GET:/v1/files/:id",
      "GET:/v1/models",
    ]);
    assert.ok(sink.records.every((r) => r.status === 200 && r.outcome === "ok"));
  } finally {
    await upstream.close();
  }
});
