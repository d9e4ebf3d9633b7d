/**
 * The body read deadline's two paths, through a real server (only bytes from the wire carry a
 * `content-length`): a declared body read whole by the middleware and handed on from Hono's body
 * cache (whole within the deadline), and a chunked or large one read through the watched stream
 * (each read within it). Either way the upstream gets the
 * caller's bytes unchanged; a body that stops is answered 408, one that lies about its length 400.
 */
import assert from "node:assert/strict";
import { EAGER_READ_MAX_BYTES } from "../lib/http/body_deadline.ts";
import { liveApp, serveOnLoopback, startFakeUpstream } from "./helpers.ts";

/** A body with odd spacing and key order, which a re-encode would not keep. */
const BODY = '{ "max_tokens":16,"model" : "claude-sonnet-4-5",\n"messages":[{"role":"user",' +
  '"content":"h\\u00e9llo"}],  "extra_field": {"kept": true} }';

/** How long a raw client waits for an answer before it gives up with what it has (ms). */
const ANSWER_WAIT_MS = 10_000;

/**
 * Sends `head` and then `parts` on a raw connection, `gapMs` apart; returns the whole answer, or
 * what came of it within {@link ANSWER_WAIT_MS} (a server that never answers fails the test's
 * assertions rather than hanging it).
 */
async function sendRaw(
  port: number,
  head: string,
  parts: string[],
  gapMs: number,
): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const encoder = new TextEncoder();
  const giveUp = setTimeout(() => conn.close(), ANSWER_WAIT_MS);
  try {
    await conn.write(encoder.encode(head));
    for (const part of parts) {
      await new Promise((resolve) => setTimeout(resolve, gapMs));
      // A server that gave up on the body may have closed its side: read what it said.
      const wrote = await conn.write(encoder.encode(part)).catch(() => null);
      if (wrote === null) break;
    }
    const decoder = new TextDecoder();
    const buffer = new Uint8Array(8192);
    let text = "";
    while (!/\r\n\r\n[\s\S]*\}\s*$/.test(text)) {
      const n = await conn.read(buffer).catch(() => null); // closed by giveUp
      if (n === null) break;
      text += decoder.decode(buffer.subarray(0, n));
    }
    return text;
  } finally {
    clearTimeout(giveUp);
    try {
      conn.close();
    } catch {
      // already closed by giveUp
    }
  }
}

/**
 * The routes whose small declared bodies are read whole before the upstream call: JSON ones, and
 * an upload (`POST /v1/files`, last: read whole up to 1 MiB so it can be retried), with a
 * content type each.
 */
const WHOLE_BODY_ROUTES = [
  { path: "/v1/messages", type: "application/json" },
  { path: "/v1/chat/completions", type: "application/json" },
  { path: "/chat", type: "application/json" },
  { path: "/v1/files", type: "multipart/form-data; boundary=sluice-test" },
];

Deno.test("the upstream gets a caller's body byte for byte, whether it declares its length or is chunked", async (t) => {
  const fake = startFakeUpstream(() =>
    Response.json({ id: "msg_1", type: "message", role: "assistant", content: [] })
  );
  const server = serveOnLoopback(liveApp(fake.url));
  try {
    for (const path of ["/v1/messages", "/v1/messages/count_tokens"]) {
      await t.step(`${path}, with a content-length`, async () => {
        const response = await fetch(`${server.url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: BODY,
        });
        assert.equal(response.status, 200);
        await response.arrayBuffer();
        assert.equal(fake.requests.at(-1)!.path, path);
        assert.equal(fake.requests.at(-1)!.body, BODY);
      });
      await t.step(`${path}, chunked`, async () => {
        const bytes = new TextEncoder().encode(BODY);
        const response = await fetch(`${server.url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: new ReadableStream({
            start(controller) {
              controller.enqueue(bytes.subarray(0, 7));
              controller.enqueue(bytes.subarray(7));
              controller.close();
            },
          }),
        });
        assert.equal(response.status, 200);
        await response.arrayBuffer();
        assert.equal(fake.requests.at(-1)!.body, BODY);
      });
    }
  } finally {
    await server.close();
    await fake.close();
  }
});

Deno.test("a large body that keeps arriving is never cut, though it takes longer than the deadline", async () => {
  const fake = startFakeUpstream(() =>
    Response.json({ id: "msg_1", type: "message", role: "assistant", content: [] })
  );
  // Each pause (50 ms) well inside the 300 ms deadline; all twelve together twice past it.
  const server = serveOnLoopback(liveApp(fake.url, { SLUICE_BODY_TIMEOUT_MS: "300" }));
  const port = Number(new URL(server.url).port);
  try {
    // Larger than what the deadline reads whole, so it is timed read by read.
    const big = BODY.replace('"kept": true', `"kept": "${"x".repeat(EAGER_READ_MAX_BYTES)}"`);
    const size = Math.ceil(big.length / 12);
    const parts = Array.from({ length: 12 }, (_, i) => big.slice(i * size, (i + 1) * size));
    const answer = await sendRaw(
      port,
      `POST /v1/messages HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: application/json\r\n` +
        `content-length: ${new TextEncoder().encode(big).length}\r\nconnection: close\r\n\r\n`,
      parts,
      50,
    );
    assert.match(answer, /^HTTP\/1\.1 200/);
    assert.equal(fake.requests.at(-1)!.body, big);
  } finally {
    await server.close();
    await fake.close();
  }
});

Deno.test("a small declared body must be whole within the deadline, however it trickles", async (t) => {
  const fake = startFakeUpstream(() => Response.json({}));
  const server = serveOnLoopback(liveApp(fake.url, { SLUICE_BODY_TIMEOUT_MS: "300" }));
  const port = Number(new URL(server.url).port);
  try {
    for (const { path, type } of WHOLE_BODY_ROUTES) {
      await t.step(path, async () => {
        const size = Math.ceil(BODY.length / 12);
        const parts = Array.from({ length: 12 }, (_, i) => BODY.slice(i * size, (i + 1) * size));
        const answer = await sendRaw(
          port,
          `POST ${path} HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: ${type}\r\n` +
            `content-length: ${new TextEncoder().encode(BODY).length}\r\n\r\n`,
          parts,
          50,
        );
        assert.match(answer, /^HTTP\/1\.1 408/);
        assert.match(answer, /did not arrive within 300 ms \(SLUICE_BODY_TIMEOUT_MS\)/);
        assert.equal(fake.requests.length, 0);
      });
    }
    await t.step(
      "/v1/files, an upload too large to be read whole: still streamed through",
      async () => {
        const big = BODY.replace('"kept": true', `"kept": "${"x".repeat(1024 * 1024)}"`);
        const size = Math.ceil(big.length / 12);
        const parts = Array.from({ length: 12 }, (_, i) => big.slice(i * size, (i + 1) * size));
        const answer = await sendRaw(
          port,
          `POST /v1/files HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: ${
            WHOLE_BODY_ROUTES.at(-1)!.type
          }\r\ncontent-length: ${big.length}\r\nconnection: close\r\n\r\n`,
          parts,
          50,
        );
        assert.match(answer, /^HTTP\/1\.1 200/);
        assert.equal(fake.requests.at(-1)!.path, "/v1/files");
        assert.equal(fake.requests.at(-1)!.body, big);
      },
    );
  } finally {
    await server.close();
    await fake.close();
  }
});

Deno.test("a body that ends before its declared length is refused 400 and never sent upstream", async (t) => {
  const fake = startFakeUpstream(() => Response.json({}));
  // With the deadline on (the default) and off: either way the short body is the caller's fault.
  for (const timeout of ["30000", "0"]) {
    const server = serveOnLoopback(liveApp(fake.url, { SLUICE_BODY_TIMEOUT_MS: timeout }));
    const port = Number(new URL(server.url).port);
    try {
      for (const { path, type } of WHOLE_BODY_ROUTES) {
        await t.step(`${path}, SLUICE_BODY_TIMEOUT_MS=${timeout}`, async () => {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port });
          // Ten bytes short, then the write side closed: the server sees the body end early.
          await conn.write(new TextEncoder().encode(
            `POST ${path} HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: ${type}\r\n` +
              `content-length: ${BODY.length + 10}\r\n\r\n${BODY}`,
          ));
          await conn.closeWrite();
          const decoder = new TextDecoder();
          const buffer = new Uint8Array(8192);
          let answer = "";
          for (;;) {
            const n = await conn.read(buffer);
            if (n === null) break;
            answer += decoder.decode(buffer.subarray(0, n));
          }
          conn.close();
          assert.match(answer, /^HTTP\/1\.1 400/);
          assert.match(answer, /"type":"invalid_request_error"/);
          assert.match(answer, /did not match its content-length/);
          assert.equal(fake.requests.length, 0);
        });
      }
    } finally {
      await server.close();
    }
  }
  await fake.close();
});
