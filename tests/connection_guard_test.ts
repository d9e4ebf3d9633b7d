/**
 * The connection guard (lib/http/connection_guard.ts): a client that does not finish its request
 * head within SLUICE_HEADER_TIMEOUT_MS gets a 408 and loses its connection while everyone else is
 * served, a connection between requests or in a long answer is left alone, one address cannot
 * hold more than SLUICE_MAX_CONNECTIONS_PER_ADDRESS connections, the app sees the real client's
 * address, and the guard stops with the server.
 */
import assert from "node:assert/strict";
import { Hono } from "hono";
import { serveGuarded } from "../lib/http/connection_guard.ts";
import { loopbackOnly } from "../lib/http/local_only.ts";
import { silentLogger } from "../lib/log.ts";
import { guardWanted } from "../lib/serve.ts";
import {
  liveApp,
  readFixture,
  sseResponse,
  startFakeUpstream,
  startMain,
  testConfig,
} from "./helpers.ts";

const HEADER_TIMEOUT_MS = 250;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** `app` behind the guard on a free loopback port. */
function guarded(
  app: { fetch: (request: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response> },
  options: { headerTimeoutMs?: number; maxConnectionsPerAddress?: number } = {},
) {
  const server = serveGuarded({
    hostname: "127.0.0.1",
    port: 0,
    headerTimeoutMs: options.headerTimeoutMs ?? HEADER_TIMEOUT_MS,
    maxConnectionsPerAddress: options.maxConnectionsPerAddress ?? 0,
    logger: silentLogger,
  }, (request, info) => app.fetch(request, info));
  return { server, port: server.addr.port, url: `http://127.0.0.1:${server.addr.port}` };
}

/** Resolves with `work`, or with "no answer" when it has not settled long after any deadline. */
async function within<T>(work: Promise<T>): Promise<T | "no answer"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const never = new Promise<"no answer">((r) => (timer = setTimeout(() => r("no answer"), 10_000)));
  try {
    return await Promise.race([work, never]);
  } finally {
    clearTimeout(timer);
  }
}

/** Everything `conn` receives until the other side closes it. */
async function readToClose(conn: Deno.Conn): Promise<string> {
  const buffer = new Uint8Array(16 * 1024);
  let text = "";
  try {
    for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) {
      text += decoder.decode(buffer.subarray(0, n));
    }
  } catch {
    // A reset also ends it.
  }
  return text;
}

/** Reads one response with a content-length from `conn`, leaving the connection open. */
async function readOneResponse(conn: Deno.Conn): Promise<{ status: number; body: string }> {
  const buffer = new Uint8Array(16 * 1024);
  let bytes = new Uint8Array(0);
  for (;;) {
    const text = decoder.decode(bytes);
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) {
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end))?.[1]);
      const body = bytes.subarray(encoder.encode(text.slice(0, end + 4)).length);
      if (body.length >= length) {
        return { status: Number(text.slice(9, 12)), body: decoder.decode(body) };
      }
    }
    const n = await conn.read(buffer);
    if (n === null) throw new Error(`closed after ${JSON.stringify(text)}`);
    bytes = new Uint8Array([...bytes, ...buffer.subarray(0, n)]);
  }
}

function errorOf(answer: string) {
  return JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4));
}

const messageBody = (stream: boolean) =>
  JSON.stringify({
    model: "claude-sonnet-5-5",
    max_tokens: 16,
    stream,
    messages: [{ role: "user", content: "hi" }],
  });

/** sluice in live mode over a fake upstream that streams `fixture`, `delayMs` between chunks. */
async function sluiceOverFixture(delayMs = 0) {
  const fixture = await readFixture("three-words.sse");
  const upstream = startFakeUpstream((request) => {
    if (!request.url.endsWith("/v1/messages")) return Response.json({ ok: true });
    if (delayMs === 0) return sseResponse(fixture, { chunkSize: 97 });
    let offset = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        await new Promise((r) => setTimeout(r, delayMs));
        if (offset >= fixture.length) return controller.close();
        controller.enqueue(fixture.subarray(offset, offset + 97));
        offset += 97;
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  // Gateway keys set: the loopback-only rule does not apply to these tests.
  const app = liveApp(upstream.url, { SLUICE_API_KEYS: "sk-gw-guard" });
  return { app, upstream, fixture };
}

async function streamedMessage(url: string): Promise<Uint8Array> {
  const response = await fetch(`${url}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": "sk-gw-guard" },
    body: messageBody(true),
  });
  assert.equal(response.status, 200);
  return await response.bytes();
}

Deno.test("a client that stops or drips part-way through its request head is answered 408 timeout_error and disconnected after the header deadline, while whole requests are served", async (t) => {
  const { app, upstream, fixture } = await sluiceOverFixture();
  const { server, port, url } = guarded(app);
  try {
    for (const drip of [false, true]) {
      await t.step(
        drip ? "a head dripped a byte at a time" : "half a head, then silence",
        async () => {
          const before = upstream.requests.length;
          const conn = await Deno.connect({ hostname: "127.0.0.1", port });
          try {
            const head = "POST /v1/messages HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: applica";
            await conn.write(encoder.encode(head.slice(0, 20)));
            const answered = readToClose(conn);
            let dripping = drip;
            const drips = (async () => {
              for (let i = 20; dripping && i < head.length; i++) {
                await new Promise((r) => setTimeout(r, 40));
                await conn.write(encoder.encode(head[i])).catch(() => (dripping = false));
              }
            })();
            // Meanwhile streamed messages pass through byte for byte.
            for (let i = 0; i < 3; i++) assert.deepEqual(await streamedMessage(url), fixture);
            const answer = await within(answered);
            dripping = false;
            await drips;
            assert.notEqual(answer, "no answer", "the connection was closed");
            assert.match(answer as string, /^HTTP\/1\.1 408 /);
            assert.match(answer as string, /\r\nconnection: close\r\n/i);
            assert.match(answer as string, /\r\ncontent-type: application\/json\r\n/i);
            const body = errorOf(answer as string);
            assert.equal(body.type, "error");
            assert.equal(body.error.type, "timeout_error");
            assert.match(body.error.message, /SLUICE_HEADER_TIMEOUT_MS/);
            assert.equal(upstream.requests.length - before, 3, "only the whole requests went on");
          } finally {
            conn.close();
          }
        },
      );
    }
  } finally {
    await server.shutdown();
    await upstream.close();
  }
});

Deno.test("on a kept-alive connection, a second request head that stalls is dropped with a 408 and a slow but complete one is served", async (t) => {
  const { app, upstream } = await sluiceOverFixture();
  const { server, port } = guarded(app);
  const get = "GET /health HTTP/1.1\r\nhost: sluice.test\r\n\r\n";
  try {
    await t.step("a stalled second head", async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(encoder.encode(get));
        assert.equal((await readOneResponse(conn)).status, 200);
        await conn.write(encoder.encode(get.slice(0, 25)));
        const answer = await within(readToClose(conn));
        assert.notEqual(answer, "no answer", "the connection was closed");
        assert.match(answer as string, /^HTTP\/1\.1 408 /);
        assert.equal(errorOf(answer as string).error.type, "timeout_error");
      } finally {
        conn.close();
      }
    });
    await t.step("a slow second head that completes within the deadline", async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(encoder.encode(get));
        assert.equal((await readOneResponse(conn)).status, 200);
        // Idle for most of a deadline, then a head in two parts, well within one.
        await new Promise((r) => setTimeout(r, HEADER_TIMEOUT_MS / 2));
        await conn.write(encoder.encode(get.slice(0, 25)));
        await new Promise((r) => setTimeout(r, HEADER_TIMEOUT_MS / 5));
        await conn.write(encoder.encode(get.slice(25)));
        const second = await readOneResponse(conn);
        assert.equal(second.status, 200);
        assert.equal(JSON.parse(second.body).status, "ok");
      } finally {
        conn.close();
      }
    });
  } finally {
    await server.shutdown();
    await upstream.close();
  }
});

Deno.test("a streamed answer longer than the header deadline and a body slower than it are not cut by it", async (t) => {
  // Ten chunks, a 100 ms pause before each: four deadlines' worth of answer.
  const { app, upstream, fixture } = await sluiceOverFixture(100);
  const { server, port, url } = guarded(app);
  try {
    await t.step("the long answer arrives whole", async () => {
      assert.deepEqual(await streamedMessage(url), fixture);
    });
    await t.step("a body sent in two parts, twice the deadline apart, is answered", async () => {
      const body = messageBody(false);
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(encoder.encode(
          "POST /v1/messages HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: application/json\r\n" +
            `x-api-key: sk-gw-guard\r\nconnection: close\r\ncontent-length: ${body.length}\r\n\r\n` +
            body.slice(0, 10),
        ));
        await new Promise((r) => setTimeout(r, HEADER_TIMEOUT_MS * 2));
        await conn.write(encoder.encode(body.slice(10)));
        const answer = await within(readToClose(conn));
        assert.match(answer as string, /^HTTP\/1\.1 200 /);
        assert.deepEqual(JSON.parse(upstream.requests.at(-1)!.body), JSON.parse(body));
      } finally {
        conn.close();
      }
    });
  } finally {
    await server.shutdown();
    await upstream.close();
  }
});

Deno.test("one address holding SLUICE_MAX_CONNECTIONS_PER_ADDRESS connections gets a 429 rate_limit_error for the next, and a new one once one closes", async () => {
  const { app, upstream } = await sluiceOverFixture();
  const { server, port } = guarded(app, { headerTimeoutMs: 0, maxConnectionsPerAddress: 2 });
  const open = [
    await Deno.connect({ hostname: "127.0.0.1", port }),
    await Deno.connect({ hostname: "127.0.0.1", port }),
  ];
  const until = async (count: number) => {
    for (let i = 0; i < 500 && server.connections() !== count; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(server.connections(), count);
  };
  try {
    await until(2);
    const third = await Deno.connect({ hostname: "127.0.0.1", port });
    const refused = await within(readToClose(third));
    third.close();
    assert.notEqual(refused, "no answer", "the connection was closed");
    assert.match(refused as string, /^HTTP\/1\.1 429 /);
    assert.match(refused as string, /\r\nconnection: close\r\n/i);
    const body = errorOf(refused as string);
    assert.equal(body.type, "error");
    assert.equal(body.error.type, "rate_limit_error");
    assert.match(body.error.message, /too many connections from this address/);

    open.shift()!.close();
    await until(1);
    const next = await Deno.connect({ hostname: "127.0.0.1", port });
    await next.write(
      encoder.encode("GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    );
    const served = await within(readToClose(next));
    next.close();
    assert.match(served as string, /^HTTP\/1\.1 200 /);
  } finally {
    for (const conn of open) conn.close();
    await server.shutdown();
    await upstream.close();
  }
});

Deno.test("behind the guard the app sees the client's own address, the loopback-only rule still applies, and the private port refuses direct callers", async () => {
  const app = new Hono<{ Bindings: Deno.ServeHandlerInfo }>();
  app.use(loopbackOnly());
  app.get("/who", (c) => c.json(c.env.remoteAddr));
  const { server, port } = guarded(app);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(encoder.encode("GET /who HTTP/1.1\r\nhost: x\r\n\r\n"));
    const { status, body } = await readOneResponse(conn);
    assert.equal(status, 200, "a loopback client passes the loopback-only rule");
    const seen = JSON.parse(body) as Deno.NetAddr;
    // The client's socket, not the front's own connection to the server behind it.
    assert.equal(seen.port, conn.localAddr.port);
    assert.equal(seen.hostname, (conn.localAddr as Deno.NetAddr).hostname);
    assert.equal(seen.transport, "tcp");
    assert.equal(server.connections(), 1);
  } finally {
    conn.close();
  }
  const direct = await fetch(`http://127.0.0.1:${server.inner.port}/who`);
  assert.equal(direct.status, 403);
  assert.equal((await direct.json()).error.type, "permission_error");
  await server.shutdown();
});

Deno.test("on shutdown the guard stops accepting, closes idle and half-headed connections, lets a running answer finish and leaves nothing open", async () => {
  const { app, upstream, fixture } = await sluiceOverFixture(30);
  const { server, port, url } = guarded(app, { headerTimeoutMs: 60_000 });
  const idle = await Deno.connect({ hostname: "127.0.0.1", port });
  const halfHead = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await halfHead.write(encoder.encode("GET /health HTTP/1.1\r\nhost:"));
    const running = streamedMessage(url);
    for (let i = 0; i < 500 && upstream.requests.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const stopped = server.shutdown();
    // Both waiting connections are closed without an answer (the 60 s deadline is far away).
    assert.equal(await within(readToClose(idle)), "");
    assert.equal(await within(readToClose(halfHead)), "");
    assert.deepEqual(await running, fixture, "the running answer finished whole");
    assert.notEqual(await within(stopped), "no answer");
    assert.equal(server.connections(), 0);
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }));
  } finally {
    idle.close();
    halfHead.close();
    await upstream.close();
  }
});

Deno.test("main.ts serves behind the guard: a stalled head gets a 408 naming the setting, and SIGTERM still exits 0", async () => {
  const sluice = await startMain({ SLUICE_HEADER_TIMEOUT_MS: "300", SLUICE_LOG_LEVEL: "info" });
  const { port } = new URL(sluice.url);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) });
  try {
    await conn.write(encoder.encode("GET /health HTTP/1.1\r\n"));
    const answer = await within(readToClose(conn));
    assert.match(answer as string, /^HTTP\/1\.1 408 /);
    assert.match(errorOf(answer as string).error.message, /300 ms \(SLUICE_HEADER_TIMEOUT_MS\)/);
    const health = await fetch(`${sluice.url}/health`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
  } finally {
    conn.close();
  }
  const status = await sluice.stop();
  assert.equal(status.code, 0);
  assert.match(sluice.errors(), /dropped a connection from 127\.0\.0\.1 whose request head/);
  assert.doesNotMatch(sluice.errors(), /^\s+at /m, "no stack trace");
});

Deno.test("the guard runs when either setting is on, and never on Deno Deploy", () => {
  assert.equal(guardWanted(testConfig()), false, "off by default (it costs; docs/hardening.md)");
  assert.equal(guardWanted(testConfig({ SLUICE_MAX_CONNECTIONS_PER_ADDRESS: "256" })), true);
  assert.equal(guardWanted(testConfig({ SLUICE_HEADER_TIMEOUT_MS: "10000" })), true);
  assert.equal(
    guardWanted(testConfig({ SLUICE_HEADER_TIMEOUT_MS: "10000", DENO_DEPLOYMENT_ID: "abc123" })),
    false,
  );
});
