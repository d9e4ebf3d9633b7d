/**
 * The other side of tests/load_test.ts, run as a subprocess so that its memory is not counted
 * as sluice's: a fake Anthropic API and the clients, both on 127.0.0.1.
 *
 * Protocol, one JSON object per line: prints `{"upstream": url}`; reads `{"sluice": url,
 * "streams": n}`; opens n streams through sluice, each of which the fake upstream holds after its
 * first events; prints `{"open": n, "openMs": …}` once every client has those first bytes; reads
 * `{"release": true}`; lets every stream finish; prints `{"done": {...}}` and exits.
 */
const FIXTURE = new URL("../fixtures/default.sse", import.meta.url);
const KEEP_ALIVE = ": keep-alive\n\n";

const fixture = await Deno.readFile(FIXTURE);
const text = new TextDecoder().decode(fixture);
// Hold each stream after its first three events (message_start, content_block_start, a ping).
let cut = 0;
for (let i = 0; i < 3; i++) cut = text.indexOf("\n\n", cut) + 2;
const head = fixture.subarray(0, cut);
const rest = fixture.subarray(cut);

let openGate!: () => void;
const gate = new Promise<void>((resolve) => (openGate = resolve));

const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
  await req.arrayBuffer();
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(head);
      await gate;
      controller.enqueue(rest);
      controller.close();
    },
  });
  return new Response(body, {
    headers: { "content-type": "text/event-stream", "request-id": "req_load" },
  });
});

const lines = readLines(Deno.stdin.readable);
const say = (value: unknown) => console.log(JSON.stringify(value));

say({ upstream: `http://127.0.0.1:${upstream.addr.port}` });
const { sluice, streams } = JSON.parse((await lines.next()).value as string);

const started = performance.now();
let heads = 0;
let allHeads!: () => void;
const headsIn = new Promise<void>((resolve) => (allHeads = resolve));
const errors: string[] = [];
let keepAlives = 0;

async function client(i: number): Promise<boolean> {
  try {
    const response = await fetch(`${sluice}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": "load" },
      body: JSON.stringify({
        model: "claude-test",
        max_tokens: 256,
        stream: true,
        messages: [{ role: "user", content: `stream ${i}` }],
      }),
    });
    if (response.status !== 200) throw new Error(`status ${response.status}`);
    const chunks: Uint8Array[] = [];
    let size = 0;
    let counted = false;
    for await (const chunk of response.body!) {
      chunks.push(chunk);
      size += chunk.length;
      if (!counted && size >= head.length) {
        counted = true;
        if (++heads === streams) allHeads();
      }
    }
    const got = new Uint8Array(size);
    let offset = 0;
    for (const chunk of chunks) {
      got.set(chunk, offset);
      offset += chunk.length;
    }
    const received = new TextDecoder().decode(got);
    keepAlives += received.split(KEEP_ALIVE).length - 1;
    // Byte for byte what the upstream sent, keep-alive comments (sluice's own) aside.
    if (received.replaceAll(KEEP_ALIVE, "") !== text) throw new Error("bytes differ");
    return true;
  } catch (error) {
    errors.push(`stream ${i}: ${error}`);
    if (errors.length === 1 && heads < streams) allHeads(); // don't wait for a failed one
    return false;
  }
}

const results = Array.from({ length: streams }, (_, i) => client(i));
await headsIn;
say({ open: heads, openMs: performance.now() - started });

await lines.next(); // {"release": true}
const released = performance.now();
openGate();
const ok = (await Promise.all(results)).filter(Boolean).length;
say({
  done: {
    ok,
    failed: streams - ok,
    errors: errors.slice(0, 5),
    keepAlives,
    drainMs: performance.now() - released,
  },
});
await upstream.shutdown();

/** Lines of a byte stream (stdin). */
async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buffer = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    let at: number;
    while ((at = buffer.indexOf("\n")) >= 0) {
      yield buffer.slice(0, at);
      buffer = buffer.slice(at + 1);
    }
  }
}
