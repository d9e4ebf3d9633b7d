/**
 * A bounded loopback load test: at least 1,000 concurrent streams through a real sluice
 * (`Deno.serve` on 127.0.0.1, built as main.ts builds it) from a fake upstream on 127.0.0.1.
 * Every stream must arrive complete and byte for byte, with no error, and sluice must hold them
 * all open at once.
 *
 * The fake upstream and the clients run in a subprocess (bench/load_peer.ts), so the memory this
 * process gains while the streams are held open is sluice's. That figure is printed, not
 * asserted. `SLUICE_LOAD_STREAMS` changes the count (default 1000).
 *
 *   deno test --allow-net=127.0.0.1 --allow-read --allow-env --allow-run \
 *     --v8-flags=--expose-gc tests/load_test.ts
 */
import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { createLifecycle } from "../lib/http/shutdown.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { testConfig } from "./helpers.ts";

const STREAMS = Number(Deno.env.get("SLUICE_LOAD_STREAMS") ?? 1000);

/** Reads JSON lines from the peer's stdout. */
async function* jsonLines(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<Record<string, unknown>> {
  let buffer = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    let at: number;
    while ((at = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, at).trim();
      buffer = buffer.slice(at + 1);
      if (line) yield JSON.parse(line);
    }
  }
}

/** Forces a garbage collection when V8 exposes it (`--v8-flags=--expose-gc`). */
const gc = (globalThis as { gc?: () => void }).gc;
function measure(): Deno.MemoryUsage {
  gc?.();
  return Deno.memoryUsage();
}

const mib = (bytes: number) => (bytes / 1024 / 1024).toFixed(1);
const kib = (bytes: number) => (bytes / 1024).toFixed(1);

Deno.test(`${STREAMS} concurrent streams through a real sluice on loopback arrive complete and byte for byte`, async () => {
  const peer = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      "--allow-read",
      new URL("../bench/load_peer.ts", import.meta.url).pathname,
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const fromPeer = jsonLines(peer.stdout);
  const toPeer = peer.stdin.getWriter();
  const tell = (value: unknown) =>
    toPeer.write(new TextEncoder().encode(JSON.stringify(value) + "\n"));
  const next = async () => {
    const { value, done } = await fromPeer.next();
    assert.equal(done, false, "the load peer ended early");
    return value as Record<string, unknown>;
  };

  const { upstream: upstreamUrl } = await next();
  const stats = memorySink();
  const lifecycle = createLifecycle();
  const app = createApp({
    // The defaults sluice runs with (keep-alive 15 s, idle timeout 5 min, no limits).
    config: testConfig(),
    upstream: createUpstream({
      mode: "live",
      apiKey: "sk-ant-load",
      baseURL: upstreamUrl as string,
      maxRetries: 0,
      streamPolicy: { idleTimeoutMs: 300_000, keepAliveMs: 15_000 },
    }),
    logger: silentLogger,
    stats,
    lifecycle,
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  try {
    const before = measure();
    await tell({ sluice: `http://127.0.0.1:${server.addr.port}`, streams: STREAMS });
    const open = await next();
    const during = measure();
    const active = lifecycle.active();
    assert.equal(open.open, STREAMS, "every client got its first events");
    assert.equal(active, STREAMS, "sluice held every stream open at once");
    await tell({ release: true });
    const { done } = await next() as {
      done: { ok: number; failed: number; errors: string[]; keepAlives: number; drainMs: number };
    };
    assert.deepEqual(done.errors, [], "no stream failed");
    assert.equal(done.ok, STREAMS, "every stream arrived complete and byte for byte");
    for (let i = 0; i < 500 && stats.records.length < STREAMS; i++) {
      await new Promise((r) => setTimeout(r, 2));
    }
    assert.equal(stats.records.length, STREAMS);
    assert.ok(stats.records.every((s) => s.outcome === "ok"), "every stream recorded as ok");

    const rss = during.rss - before.rss;
    const heap = during.heapUsed - before.heapUsed;
    const external = during.external - before.external;
    const heapTotal = during.heapTotal - before.heapTotal;
    console.log(
      `load: ${STREAMS} concurrent streams held open by sluice (Deno ${Deno.version.deno}); ` +
        `all opened in ${(open.openMs as number).toFixed(0)} ms, drained in ` +
        `${done.drainMs.toFixed(0)} ms after release; keep-alives seen: ${done.keepAlives}\n` +
        `memory while open vs before: RSS +${mib(rss)} MiB (${
          kib(rss / STREAMS)
        } KiB per stream), ` +
        `JS heap +${mib(heap)} MiB (${kib(heap / STREAMS)} KiB per stream), ` +
        `external (buffers) +${mib(external)} MiB (${kib(external / STREAMS)} KiB per stream), ` +
        `V8 heap reserved +${mib(heapTotal)} MiB` +
        (gc ? " (after a forced GC)" : " (no forced GC: run with --v8-flags=--expose-gc)"),
    );
  } finally {
    await toPeer.close().catch(() => {});
    for await (const _ of fromPeer) { /* drain */ }
    await peer.status;
    await server.shutdown();
  }
});
