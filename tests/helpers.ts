/**
 * Shared test helpers: the SDK oracle, chunk splitters, and the fake upstream.
 */
import Anthropic from "@anthropic-ai/sdk";

/** Where the reference data (not the project's fixtures) lives. */
export const REFERENCE_DIR = new URL("../../shared/reference/anthropic-sse/", import.meta.url);
/** The project's own recordings. */
export const FIXTURES_DIR = new URL("../fixtures/", import.meta.url);

/** A small seeded PRNG (mulberry32), so random splits are reproducible from the seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Splits bytes into chunks of `size` bytes. */
export function splitEvery(bytes: Uint8Array, size: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.subarray(i, i + size));
  return chunks;
}

/** Splits bytes at random offsets (chunks of 1 to `max` bytes). */
export function splitRandom(bytes: Uint8Array, random: () => number, max = 64): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let i = 0;
  while (i < bytes.length) {
    const size = 1 + Math.floor(random() * max);
    chunks.push(bytes.subarray(i, i + size));
    i += size;
  }
  return chunks;
}

/** A ReadableStream that yields the given chunks. */
export function streamOf(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]);
      else controller.close();
    },
  });
}

/** What the official SDK makes of a byte stream. */
export interface OracleResult {
  /** `finalMessage()`, or null when it rejected. */
  finalMessage: unknown | null;
  /** The last snapshot the SDK showed (its `currentMessage`, kept after errors). */
  lastSnapshot: unknown | null;
  /** The error the stream emitted, if any. */
  error: { type: string | null; message: string } | null;
  /** Text deltas reported by the `text` event, in order. */
  texts: string[];
}

/**
 * Replays bytes through `client.messages.stream()` of `@anthropic-ai/sdk` with a fake fetch: the
 * oracle the accumulator is compared with. Results are JSON round-tripped, minus the SDK-only
 * `parsed_output` field, so they compare as a client would see them.
 */
export async function sdkOracle(chunks: Uint8Array[]): Promise<OracleResult> {
  const client = new Anthropic({
    apiKey: "test-key",
    maxRetries: 0,
    fetch: () =>
      Promise.resolve(
        new Response(streamOf(chunks), {
          headers: { "content-type": "text/event-stream", "request-id": "req_oracle" },
        }),
      ),
  });
  const stream = client.messages.stream({ model: "m", max_tokens: 1, messages: [] });
  let snapshot: unknown = null;
  let error: OracleResult["error"] = null;
  const texts: string[] = [];
  stream.on("streamEvent", (_event, snap) => (snapshot = snap));
  stream.on("text", (delta) => texts.push(delta));
  stream.on("error", (err) => {
    const e = err as { type?: string | null; message: string };
    error = { type: e.type ?? null, message: e.message };
  });
  let finalMessage: unknown = null;
  try {
    finalMessage = await stream.finalMessage();
  } catch {
    finalMessage = null;
  }
  return {
    finalMessage: finalMessage ? clean(finalMessage) : null,
    lastSnapshot: snapshot ? clean(snapshot) : null,
    error,
    texts,
  };
}

/** A JSON round trip without the SDK's `parsed_output` helper field. */
export function clean(value: unknown): unknown {
  const json = JSON.parse(JSON.stringify(value));
  if (json && typeof json === "object") delete json.parsed_output;
  return json;
}
