/**
 * Files stream through sluice both ways: a 100 MB upload and a 100 MB download through a real
 * main.ts process (live mode, fake upstream on 127.0.0.1) raise sluice's peak memory by far less
 * than the file. Peak is the kernel's high-water mark of the process (`VmHWM`), read before and
 * after each transfer; the figures are printed so they can be reported.
 */
import assert from "node:assert/strict";
import { startFakeUpstream, startMain } from "./helpers.ts";

const MiB = 1024 * 1024;
const FILE_BYTES = 100 * MiB;
const CHUNK = new Uint8Array(256 * 1024).map((_, i) => i % 251);
/** The most a 100 MB transfer may add to sluice's peak memory. */
const BUDGET_BYTES = 32 * MiB;

/**
 * The process's peak resident memory so far, in bytes (Linux `/proc`; read by `cat`, since Deno
 * lets only `--allow-all` read `/proc` itself).
 */
async function peakRss(pid: number): Promise<number> {
  const output = await new Deno.Command("cat", { args: [`/proc/${pid}/status`] }).output();
  const status = new TextDecoder().decode(output.stdout);
  const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1]);
  assert.ok(Number.isFinite(kb), "VmHWM is readable");
  return kb * 1024;
}

/** `bytes` bytes as a stream of CHUNK-sized pieces, with no declared length. */
function generated(bytes: number): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream({
    pull(controller) {
      if (sent >= bytes) return controller.close();
      const piece = CHUNK.subarray(0, Math.min(CHUNK.length, bytes - sent));
      sent += piece.length;
      controller.enqueue(piece);
    },
  });
}

/**
 * Reads a stream to its end, returning its length and a checksum of every 4099th byte by its
 * position (the same whatever the chunking).
 */
async function drain(body: ReadableStream<Uint8Array>): Promise<{ bytes: number; sum: number }> {
  let bytes = 0;
  let sum = 0;
  for await (const chunk of body) {
    const step = 4099;
    for (let i = (step - (bytes % step)) % step; i < chunk.length; i += step) {
      sum = (sum + (chunk[i] + 1) * ((bytes + i) % 1e6)) % 1e9;
    }
    bytes += chunk.length;
  }
  return { bytes, sum };
}

Deno.test("a 100 MB upload and download stream through sluice without holding the file in memory", async () => {
  let received: { bytes: number; sum: number } | undefined;
  const upstream = startFakeUpstream(async (req, seen) => {
    if (req.method === "GET" && seen.path === "/v1/models") {
      return Response.json({ data: [{ type: "model", id: "claude-sonnet-5-5" }], has_more: false });
    }
    if (req.method === "POST" && seen.path === "/v1/files") {
      received = await drain(req.body!);
      return Response.json({ id: "file_big", type: "file", size_bytes: received.bytes });
    }
    if (seen.path === "/v1/files/file_big/content") {
      const size = Number(new URL(req.url).searchParams.get("size") ?? FILE_BYTES);
      return new Response(generated(size), {
        headers: { "content-type": "application/octet-stream" },
      });
    }
    return Response.json({ error: "unexpected" }, { status: 404 });
  }, { readBodies: false });
  const kvDir = await Deno.makeTempDir();
  const sluice = await startMain({
    ANTHROPIC_API_KEY: "sk-ant-memory-test",
    ANTHROPIC_BASE_URL: upstream.url,
    SLUICE_KV_PATH: `${kvDir}/kv.sqlite3`,
  });
  const upload = async (bytes: number) => {
    // A body of known length, as the SDKs and curl send a file (multipart of a sized file). A
    // body without a declared length is counted in JavaScript against SLUICE_MAX_FILE_BYTES, so
    // it leaves garbage for the collector; see docs/api.md.
    const file = new Uint8Array(bytes);
    for (let i = 0; i < bytes; i += CHUNK.length) file.set(CHUNK.subarray(0, bytes - i), i);
    const response = await fetch(`${sluice.url}/v1/files`, {
      method: "POST",
      headers: {
        "content-type": "application/octet-stream",
        "anthropic-beta": "files-api-2025-04-14",
      },
      body: new Blob([file]),
    });
    assert.equal(response.status, 200, await response.clone().text());
    return await response.json();
  };
  const download = async (bytes: number) => {
    const response = await fetch(`${sluice.url}/v1/files/file_big/content?size=${bytes}`);
    assert.equal(response.status, 200);
    return await drain(response.body!);
  };
  try {
    // Warm up both paths, so the high-water mark holds the code and buffers they need.
    await upload(4 * MiB);
    await download(4 * MiB);
    const before = await peakRss(sluice.pid);

    const uploaded = await upload(FILE_BYTES);
    assert.equal(uploaded.size_bytes, FILE_BYTES);
    assert.deepEqual(received, await drain(generated(FILE_BYTES)), "every byte arrived, in order");
    const afterUpload = await peakRss(sluice.pid);

    const downloaded = await download(FILE_BYTES);
    assert.deepEqual(downloaded, await drain(generated(FILE_BYTES)));
    const afterDownload = await peakRss(sluice.pid);

    const mb = (n: number) => (n / MiB).toFixed(1);
    console.log(
      `sluice peak RSS: ${mb(before)} MiB after warm-up, ${mb(afterUpload)} MiB after a 100 MiB ` +
        `upload (+${mb(afterUpload - before)}), ${mb(afterDownload)} MiB after a 100 MiB ` +
        `download (+${mb(afterDownload - afterUpload)})`,
    );
    assert.ok(afterUpload - before < BUDGET_BYTES, `upload added ${mb(afterUpload - before)} MiB`);
    assert.ok(
      afterDownload - afterUpload < BUDGET_BYTES,
      `download added ${mb(afterDownload - afterUpload)} MiB`,
    );
  } finally {
    await sluice.stop();
    await upstream.close();
    await Deno.remove(kvDir, { recursive: true });
  }
});
