/**
 * Bad input: every malformed request gets a 4xx in Anthropic's error shape that names the
 * problem, costs no upstream call, and never shows a 500 or a stack trace.
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { readFixture, serveOnLoopback, testConfig } from "./helpers.ts";

const valid = {
  model: "claude-test",
  max_tokens: 16,
  messages: [{ role: "user", content: "hi" }],
};

/** An app whose fake upstream counts the calls that got through. */
async function countingApp(env: Record<string, string> = {}) {
  const fixture = await readFixture("three-words.json");
  let calls = 0;
  const upstream = createUpstream({
    mode: "live",
    apiKey: "sk-ant-test",
    baseURL: "http://upstream.test",
    maxRetries: 0,
    fetch: () => {
      calls++;
      return Promise.resolve(
        new Response(fixture as BodyInit, { headers: { "content-type": "application/json" } }),
      );
    },
  });
  const app = createApp({ config: testConfig(env), upstream, logger: silentLogger });
  return { app, calls: () => calls };
}

/** Asserts an Anthropic-shaped error with `status` and `type` whose message matches. */
async function assertError(
  response: Response,
  status: number,
  type: string,
  message: RegExp,
) {
  const text = await response.text();
  assert.equal(response.status, status, text);
  assert.match(response.headers.get("content-type") ?? "", /^application\/json/);
  const body = JSON.parse(text);
  assert.equal(body.type, "error");
  assert.equal(body.error.type, type);
  assert.match(body.error.message, message);
  assert.equal(typeof body.request_id, "string");
  assert.doesNotMatch(text, /\bat .+:\d+:\d+|file:\/\/|\.ts\b/, "no stack trace");
}

const post = (body: BodyInit | null, headers: Record<string, string> = {}) =>
  new Request("http://sluice.test/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body,
  });

Deno.test("malformed bodies get a 400 invalid_request_error that names the problem, and no upstream call", async (t) => {
  const { app, calls } = await countingApp();
  const cases: [string, BodyInit | null, RegExp, Record<string, string>?][] = [
    ["invalid JSON", '{"model": "claude-test", ', /JSON/i],
    ["an empty body", "", /JSON|body/i],
    ["JSON that is an array", "[]", /body|object|expected/i],
    ["JSON null", "null", /body|object|expected/i],
    ["a JSON number", "42", /body|object|expected/i],
    ["a model that is not a string", JSON.stringify({ ...valid, model: 42 }), /model/],
    ["a stream flag that is a string", JSON.stringify({ ...valid, stream: "yes" }), /stream/],
    ["invalid UTF-8", new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]) as BodyInit, /JSON|body/i],
    ["a text content type", JSON.stringify(valid), /content-type/, {
      "content-type": "text/plain",
    }],
    ["a list of content types", JSON.stringify(valid), /content-type/, {
      "content-type": "application/json, text/plain",
    }],
    // A JSON type in another spelling is still read and validated, never taken as `{}`.
    [
      "a bad stream flag under a JSON type in capitals with spaces",
      JSON.stringify({
        ...valid,
        stream: "yes",
      }),
      /stream/,
      { "content-type": "Application/JSON ; charset=UTF-8" },
    ],
    [
      "a form content type",
      "model=x",
      /content-type/,
      { "content-type": "application/x-www-form-urlencoded" },
    ],
  ];
  for (const [name, body, message, headers] of cases) {
    await t.step(name, async () => {
      await assertError(
        await app.request(post(body, headers)),
        400,
        "invalid_request_error",
        message,
      );
    });
  }
  await t.step("no content type at all", async () => {
    const request = new Request("http://sluice.test/v1/messages", {
      method: "POST",
      body: new TextEncoder().encode(JSON.stringify(valid)),
    });
    assert.equal(request.headers.get("content-type"), null);
    await assertError(await app.request(request), 400, "invalid_request_error", /content-type/);
  });
  assert.equal(calls(), 0, "no bad request reached the upstream");
  await t.step("while a valid request still goes through", async () => {
    const response = await app.request(post(JSON.stringify(valid)));
    assert.equal(response.status, 200);
    assert.equal(calls(), 1);
  });
});

Deno.test("a body over SLUICE_MAX_BODY_BYTES is refused with 413 request_too_large, whether or not its length is declared", async (t) => {
  const { app, calls } = await countingApp({ SLUICE_MAX_BODY_BYTES: "2048" });
  const big = JSON.stringify({ ...valid, messages: [{ role: "user", content: "x".repeat(4096) }] });
  await t.step("with content-length", async () => {
    const request = post(big);
    await assertError(await app.request(request), 413, "request_too_large", /2048 bytes/);
  });
  await t.step("streamed without content-length", async () => {
    const bytes = new TextEncoder().encode(big);
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < bytes.length; i += 500) controller.enqueue(bytes.subarray(i, i + 500));
        controller.close();
      },
    });
    const request = new Request("http://sluice.test/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
      // @ts-ignore: `duplex` is required for a streamed request body but not yet typed
      duplex: "half",
    });
    assert.equal(request.headers.get("content-length"), null);
    await assertError(await app.request(request), 413, "request_too_large", /2048 bytes/);
  });
  await t.step("a body under the limit passes", async () => {
    const small = JSON.stringify(valid);
    assert.ok(small.length < 2048);
    assert.equal((await app.request(post(small))).status, 200);
  });
  assert.equal(calls(), 1, "only the small request reached the upstream");
});

Deno.test("fields sluice does not read are the upstream's to judge: they reach it as sent", async (t) => {
  const { app, calls } = await countingApp();
  const cases: [string, unknown][] = [
    ["no model", { ...valid, model: undefined }],
    ["no max_tokens", { ...valid, max_tokens: undefined }],
    ["a max_tokens that is a string", { ...valid, max_tokens: "ten" }],
    ["no messages", { ...valid, messages: [] }],
    ["a system message mid-conversation", {
      ...valid,
      messages: [{ role: "user", content: "hi" }, { role: "system", content: "be brief" }],
    }],
    ["a message without content", { ...valid, messages: [{ role: "user" }] }],
    ["an empty object", {}],
  ];
  for (const [name, body] of cases) {
    await t.step(name, async () => {
      const before = calls();
      const response = await app.request(post(JSON.stringify(body)));
      await response.body?.cancel();
      assert.equal(response.status, 200);
      assert.equal(calls(), before + 1, "the request reached the upstream");
    });
  }
});

Deno.test("paths outside the API get a 404 not_found_error naming them", async (t) => {
  const { app, calls } = await countingApp();
  const cases: [string, string][] = [
    ["GET", "/no/such/page"],
    ["GET", "/healthz"],
    ["POST", "/v2/messages"],
  ];
  for (const [method, path] of cases) {
    await t.step(`${method} ${path}`, async () => {
      const response = await app.request(`http://sluice.test${path}`, { method });
      await assertError(
        response,
        404,
        "not_found_error",
        new RegExp(`${method} ${path.replaceAll("/", "\\/")}`),
      );
    });
  }
  assert.equal(calls(), 0, "none reached the upstream");
});

Deno.test("a deeply nested or very wide body is answered, not crashed on", async (t) => {
  const { app } = await countingApp();
  await t.step("nesting 100 000 levels deep inside content", async () => {
    const deep = "[".repeat(100_000) + "]".repeat(100_000);
    const body = `{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[${deep}]}]}`;
    const response = await app.request(post(body));
    assert.ok(response.status < 500, `status ${response.status}`);
    await response.body?.cancel();
  });
  await t.step("100 000 messages", async () => {
    const messages = Array.from({ length: 100_000 }, () => ({ role: "user", content: "x" }));
    const response = await app.request(post(JSON.stringify({ ...valid, messages })));
    assert.ok(response.status < 500, `status ${response.status}`);
    await response.body?.cancel();
  });
});

/** Reads what a raw connection receives until its answer's JSON body is whole (or it closes). */
async function readAnswer(conn: Deno.Conn): Promise<string> {
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(4096);
  let text = "";
  while (!/\r\n\r\n[\s\S]*\}\r\n/.test(text)) {
    const n = await conn.read(buffer);
    if (n === null) break;
    text += decoder.decode(buffer.subarray(0, n));
  }
  return text;
}

Deno.test("a client whose body stops short of its content-length is answered 408 timeout_error after the body deadline, while others are served", async (t) => {
  const { app, calls } = await countingApp({ SLUICE_BODY_TIMEOUT_MS: "200" });
  const server = serveOnLoopback(app);
  const port = Number(new URL(server.url).port);
  const json = JSON.stringify(valid);
  try {
    // A declared length is read whole by the deadline itself; a chunked body through its stream.
    const declared = `content-length: ${json.length}\r\n\r\n${json.slice(0, 10)}`;
    const chunked = `transfer-encoding: chunked\r\n\r\na\r\n${json.slice(0, 10)}\r\n`;
    for (
      const [name, path, framing] of [
        ["/v1/messages", "/v1/messages", declared],
        ["/chat", "/chat", declared],
        ["a forwarded call", "/v1/messages/count_tokens", declared],
        ["/v1/messages, a chunked body", "/v1/messages", chunked],
        ["a forwarded call, a chunked body", "/v1/messages/count_tokens", chunked],
      ]
    ) {
      await t.step(name, async () => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        try {
          // Headers and part of the body, then nothing.
          await conn.write(new TextEncoder().encode(
            `POST ${path} HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: application/json\r\n` +
              framing,
          ));
          const answered = readAnswer(conn);
          // Meanwhile a whole request is answered as usual.
          const served = await fetch(`${server.url}/v1/messages`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: json,
          });
          assert.equal(served.status, 200);
          await served.arrayBuffer();
          // Far past the 200 ms deadline: before it existed, no answer ever came.
          let timer: ReturnType<typeof setTimeout> | undefined;
          const never = new Promise<string>((
            r,
          ) => (timer = setTimeout(() => r("no answer"), 10_000)));
          const answer = await Promise.race([answered, never]);
          clearTimeout(timer);
          assert.match(answer, /^HTTP\/1\.1 408/);
          assert.match(answer, /\r\nconnection: close\r\n/i);
          const body = JSON.parse(answer.slice(answer.indexOf("{"), answer.lastIndexOf("}") + 1));
          assert.equal(body.type, "error");
          assert.equal(body.error.type, "timeout_error");
          assert.match(body.error.message, /SLUICE_BODY_TIMEOUT_MS/);
        } finally {
          conn.close();
        }
      });
    }
    assert.ok(calls() >= 5, "the whole requests reached the upstream");
  } finally {
    await server.close();
  }
});

Deno.test("a wrong method on one of sluice's own paths is a 405 that names the right ones", async (t) => {
  const { app, calls } = await countingApp();
  const cases: [string, string, string][] = [
    ["GET", "/chat", "POST"],
    ["POST", "/", "GET, HEAD"],
    ["DELETE", "/conversations", "GET, HEAD, POST"],
    ["POST", "/conversations/conv_1", "DELETE, GET, HEAD"],
    ["POST", "/chat/streams/stream_1", "DELETE, GET, HEAD"],
    ["DELETE", "/health", "GET, HEAD"],
  ];
  for (const [method, path, allowed] of cases) {
    await t.step(`${method} ${path}`, async () => {
      const response = await app.request(path, { method });
      assert.equal(response.headers.get("allow"), allowed);
      await assertError(
        response,
        405,
        "not_found_error",
        new RegExp(`served with ${allowed}, not ${method}`),
      );
    });
  }
  await t.step("a path sluice does not serve at all is still a 404", async () => {
    await assertError(
      await app.request("/nowhere"),
      404,
      "not_found_error",
      /no route for GET \/nowhere/,
    );
  });
  assert.equal(calls(), 0, "nothing went upstream");
});
