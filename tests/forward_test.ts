/**
 * `POST /v1/messages/count_tokens` and `GET /v1/models`: forwarded to the upstream as they came
 * (live mode), answered from the fixtures' manifest and an estimate (replay), and usable with the
 * official SDK by changing only its base URL.
 */
import Anthropic from "@anthropic-ai/sdk";
import assert from "node:assert/strict";
import { estimateInputTokens } from "../lib/replay/replay.ts";
import {
  liveApp,
  projectFixtures,
  replayApp,
  serveOnLoopback,
  startFakeUpstream,
  TEST_SERVER_KEY,
} from "./helpers.ts";

const countBody = {
  model: "claude-sonnet-5-5",
  system: "Be brief.",
  messages: [{ role: "user" as const, content: "How many tokens is this?" }],
};

Deno.test("count_tokens and models reach the upstream as the caller sent them, with the server's key", async (t) => {
  let lastSearch = "";
  const upstream = startFakeUpstream((request) => {
    const path = new URL(request.url).pathname;
    lastSearch = new URL(request.url).search;
    if (path === "/v1/messages/count_tokens") {
      return Response.json({ input_tokens: 17 }, { headers: { "request-id": "req_count" } });
    }
    if (path === "/v1/models/claude-haiku-4-5-20251001") {
      return Response.json({
        type: "model",
        id: "claude-haiku-4-5-20251001",
        display_name: "Claude Haiku 4.5",
        created_at: "2025-10-01T00:00:00Z",
      });
    }
    return Response.json({ data: [], has_more: false, first_id: null, last_id: null }, {
      headers: { "request-id": "req_models", "x-internal": "not for clients" },
    });
  });
  const sluice = serveOnLoopback(liveApp(upstream.url));
  try {
    await t.step("count_tokens: body byte for byte, beta header passed on", async () => {
      const raw = JSON.stringify(countBody) + "\n";
      const response = await fetch(`${sluice.url}/v1/messages/count_tokens`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-api-key": "caller-key",
          "anthropic-version": "2023-06-01",
          "anthropic-beta": "token-counting-2024-11-01",
        },
        body: raw,
      });
      assert.equal(response.status, 200);
      assert.deepEqual(await response.json(), { input_tokens: 17 });
      assert.equal(response.headers.get("request-id"), "req_count");
      const seen = upstream.requests.at(-1)!;
      assert.equal(seen.method, "POST");
      assert.equal(seen.path, "/v1/messages/count_tokens");
      assert.equal(seen.body, raw);
      assert.equal(seen.headers.get("x-api-key"), TEST_SERVER_KEY);
      assert.equal(seen.headers.get("anthropic-version"), "2023-06-01");
      assert.equal(seen.headers.get("anthropic-beta"), "token-counting-2024-11-01");
    });
    await t.step("models: the query string passes, headers a client needs come back", async () => {
      const response = await fetch(`${sluice.url}/v1/models?limit=5&after_id=abc`, {
        headers: { "x-api-key": "caller-key", "anthropic-version": "2023-06-01" },
      });
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("request-id"), "req_models");
      assert.equal(response.headers.get("x-internal"), null);
      await response.body?.cancel();
      const seen = upstream.requests.at(-1)!;
      assert.equal(seen.method, "GET");
      assert.equal(seen.path, "/v1/models");
      assert.equal(lastSearch, "?limit=5&after_id=abc");
      assert.equal(seen.body, "");
      assert.equal(seen.headers.get("x-api-key"), TEST_SERVER_KEY);
      assert.notEqual(seen.headers.get("x-api-key"), "caller-key");
    });
    await t.step("the official SDK works by changing only its base URL", async () => {
      const client = new Anthropic({ apiKey: "caller-key", baseURL: sluice.url, maxRetries: 0 });
      const count = await client.messages.countTokens(countBody);
      assert.equal(count.input_tokens, 17);
      const model = await client.models.retrieve("claude-haiku-4-5-20251001");
      assert.equal(model.display_name, "Claude Haiku 4.5");
      const page = await client.models.list({ limit: 5 });
      assert.deepEqual(page.data, []);
      assert.ok(upstream.requests.some((r) => r.path === "/v1/models"));
    });
  } finally {
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("an upstream error on count_tokens reaches the client with its status, body and retry headers", async () => {
  const upstream = startFakeUpstream(() =>
    Response.json(
      { type: "error", error: { type: "rate_limit_error", message: "slow down" } },
      { status: 429, headers: { "retry-after": "7", "request-id": "req_limited" } },
    )
  );
  const sluice = serveOnLoopback(liveApp(upstream.url));
  try {
    const client = new Anthropic({ apiKey: "caller-key", baseURL: sluice.url, maxRetries: 0 });
    await assert.rejects(client.messages.countTokens(countBody), (error) => {
      assert.ok(error instanceof Anthropic.RateLimitError);
      assert.equal(error.status, 429);
      assert.equal(error.requestID, "req_limited");
      assert.equal(error.headers?.get("retry-after"), "7");
      return true;
    });
  } finally {
    await sluice.close();
    await upstream.close();
  }
});

Deno.test("a count_tokens body is the upstream's to judge: it goes as sent and its 400 comes back", async () => {
  const refusal = {
    type: "error",
    error: { type: "invalid_request_error", message: "messages: Field required" },
  };
  const upstream = startFakeUpstream(() => Response.json(refusal, { status: 400 }));
  const app = liveApp(upstream.url);
  try {
    const bodies = ["{not json", JSON.stringify({ model: "m", messages: [] })];
    for (const body of bodies) {
      const response = await app.request("/v1/messages/count_tokens", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      assert.equal(response.status, 400, body);
      assert.deepEqual(await response.json(), refusal);
    }
    assert.deepEqual(upstream.requests.map((r) => r.body), bodies);
  } finally {
    await upstream.close();
  }
});

Deno.test("with gateway keys set, count_tokens and models need one too", async () => {
  const upstream = startFakeUpstream(() => Response.json({ input_tokens: 1 }));
  const app = liveApp(upstream.url, { SLUICE_API_KEYS: "gw-key-1" });
  try {
    const models = await app.request("/v1/models");
    assert.equal(models.status, 401);
    assert.equal((await models.json()).error.type, "authentication_error");
    const countWith = (key: string) =>
      app.request("/v1/messages/count_tokens", {
        method: "POST",
        headers: { "content-type": "application/json", "x-api-key": key },
        body: JSON.stringify(countBody),
      });
    const count = await countWith("wrong");
    assert.equal(count.status, 401);
    await count.body?.cancel();
    const allowed = await countWith("gw-key-1");
    assert.equal(allowed.status, 200);
    await allowed.body?.cancel();
    assert.equal(upstream.requests.length, 1);
  } finally {
    await upstream.close();
  }
});

Deno.test("in replay, models come from the manifest and count_tokens is an estimate that grows with the input", async () => {
  const set = await projectFixtures();
  assert.ok(set.models.length >= 2, "the manifest lists the models the fixtures use");
  const sluice = serveOnLoopback(await replayApp());
  try {
    const client = new Anthropic({ apiKey: "any", baseURL: sluice.url, maxRetries: 0 });
    const ids: string[] = [];
    for await (const model of client.models.list({ limit: 1 })) ids.push(model.id);
    assert.deepEqual(ids, set.models.map((m) => m.id), "paging with limit=1 visits every model");
    const first = await client.models.retrieve(set.models[0].id);
    assert.deepEqual(first, set.models[0]);
    await assert.rejects(client.models.retrieve("claude-nonexistent"), Anthropic.NotFoundError);

    const short = await client.messages.countTokens(countBody);
    const long = await client.messages.countTokens({
      ...countBody,
      messages: [{ role: "user", content: "word ".repeat(400) }],
    });
    assert.equal(short.input_tokens, estimateInputTokens(countBody));
    assert.ok(long.input_tokens > short.input_tokens * 10);
  } finally {
    await sluice.close();
  }
});

Deno.test("a models answer whose body is cut gets a 502 api_error, not a truncated document", async () => {
  const upstream = startFakeUpstream(() =>
    new Response(
      new ReadableStream({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('{"data":[{"type":"mo'));
          // Later, so the headers are out first (Deno 2.5 waits for a second chunk before them).
          setTimeout(() => controller.error(new Error("connection lost")), 20);
        },
      }),
      { headers: { "content-type": "application/json", "request-id": "req_cut" } },
    )
  );
  const app = liveApp(upstream.url);
  try {
    const response = await app.request("/v1/models");
    assert.equal(response.status, 502);
    const body = await response.json();
    assert.equal(body.error.type, "api_error");
    assert.equal(body.request_id, "req_cut");
  } finally {
    await upstream.close();
  }
});

Deno.test("in replay, bad model ids and limits get 4xx in Anthropic's shape, never a 5xx", async () => {
  const app = await replayApp();
  const cases: [string, number, string][] = [
    ["/v1/models/%ZZ", 404, "not_found_error"],
    ["/v1/models/%E0%A4", 404, "not_found_error"],
    ["/v1/models/claude-nonexistent", 404, "not_found_error"],
    ["/v1/models?limit=-5", 400, "invalid_request_error"],
    ["/v1/models?limit=abc", 400, "invalid_request_error"],
    ["/v1/models?limit=1001", 400, "invalid_request_error"],
  ];
  for (const [path, status, type] of cases) {
    const response = await app.request(path);
    assert.equal(response.status, status, path);
    const body = await response.json();
    assert.equal(body.type, "error", path);
    assert.equal(body.error.type, type, path);
  }
});

Deno.test("dot segments, backslashes and encoded slashes never reach the upstream, however the caller writes them", async (t) => {
  const upstream = startFakeUpstream(() => Response.json({ data: [] }));
  const server = serveOnLoopback(liveApp(upstream.url));
  const { port } = new URL(server.url);
  // Written on the socket as they are: fetch and the URL parser would resolve them first.
  const targets = [
    "/v1/models/..",
    "/v1/models/../files",
    "/v1/models/%2e%2e",
    "/v1/models/%2E%2e/files",
    "/v1/models/.%2e/files",
    "/v1/models/./claude-sonnet-5-5",
    "/v1/files/%2f..%2fmodels",
    "/v1/files/%5c..%5cmodels",
    "/v1/models\\..\\files",
    "/v1/messages/../models",
  ];
  try {
    for (const target of targets) {
      for (const method of ["GET", "POST", "DELETE"]) {
        await t.step(`${method} ${target}`, async () => {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) });
          try {
            const body = method === "POST" ? "{}" : "";
            await conn.write(new TextEncoder().encode(
              `${method} ${target} HTTP/1.1\r\nhost: sluice.test\r\nconnection: close\r\n` +
                `content-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
            ));
            let answer = "";
            const buffer = new Uint8Array(4096);
            for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) {
              answer += new TextDecoder().decode(buffer.subarray(0, n));
            }
            assert.match(answer, /^HTTP\/1\.1 4\d\d/);
            const json = JSON.parse(answer.slice(answer.indexOf("{"), answer.lastIndexOf("}") + 1));
            assert.equal(json.type, "error");
            assert.match(json.error.type, /invalid_request_error|not_found_error/);
          } finally {
            conn.close();
          }
        });
      }
    }
    assert.deepEqual(upstream.requests.map((r) => `${r.method} ${r.path}`), [], "nothing sent");
  } finally {
    await server.close();
    await upstream.close();
  }
});
