/**
 * Resumable `/chat` SSE streams: the events of an answer are numbered (`id:`) and written to
 * Deno KV as they are sent, so a client that lost its connection can ask any instance sharing
 * the KV for what it missed (`GET /chat/streams/{id}`) and then follow the rest live.
 *
 * Layout, under the owner (a key id, never a key), so another key's lookup finds nothing:
 * - `["sluice", "streams", owner, id, "head"]` → {@link StreamHead}: how many events and chunks
 *   are stored, whether the answer is still being written, and the writer's last sign of life;
 * - `["sluice", "streams", owner, id, "chunk", n]` → {@link StreamChunk}: consecutive events as
 *   UTF-8 bytes (at most {@link CHUNK_BYTES}, under KV's 64 KiB value limit) and where each ends.
 *
 * The writer is off the byte path: `push` is synchronous (the client's bytes are enqueued
 * without waiting on KV), and events are written in batches, one atomic commit (chunks + head)
 * every `flushMs` at most, plus one at once for the first event and one for the last. While the
 * upstream is silent the head is rewritten every `staleMs / 3` as a heartbeat; a reader that
 * sees no sign of life for `staleMs` declares the answer cut (once, by a checked commit), adds
 * the final `error` event to the stream and records the partial answer.
 */
import type { Clock } from "../clock.ts";
import type { Logger } from "../log.ts";
import { decodeAll } from "../stream/sse.ts";
import { KEEP_ALIVE_COMMENT } from "../stream/tap.ts";
import { errorPayload, sseEvent } from "./encoding.ts";

const PREFIX = ["sluice", "streams"] as const;

/** Most bytes of events in one chunk value (KV caps a value at 64 KiB; the rest is headroom). */
export const CHUNK_BYTES = 60_000;

/** Most chunks per commit (well inside KV's limits on an atomic operation's size). */
const CHUNKS_PER_COMMIT = 8;

/** Chunks outlive the head by this much: a chunk is written once, the head again and again. */
const CHUNK_GRACE_MS = 60 * 60 * 1000;

/** The final event's message when the instance writing an answer died. */
export const CUT_MESSAGE =
  "the instance writing this answer stopped; the answer was cut and is incomplete";

/** How resumable streams are kept. */
export interface ResumeSettings {
  /** How long a stream stays resumable after its answer ended (ms). */
  ttlMs: number;
  /** Longest an event waits to be written to KV (ms); readers poll the head this often too. */
  flushMs: number;
  /** A live stream whose writer shows no sign of life this long is declared cut (ms). */
  staleMs: number;
}

/** What a stream's head records. Times are on the writer's clock (epoch ms). */
export interface StreamHead {
  /** Events stored so far: their ids are 1..seq. */
  seq: number;
  /** Chunks stored so far: 0..chunks-1. */
  chunks: number;
  /** `live` while being written; `ended` after its final event; `cut` when its writer died. */
  state: "live" | "ended" | "cut";
  /** The writer's last commit. */
  beatAt: number;
  /** When a finished stream stops being resumable; null while live. */
  expiresAt: number | null;
  requestId: string;
  startedAt: number;
  model: string | null;
  conversationId: string | null;
  /** The user's message, so a cut answer can be recorded in its conversation. */
  message: string | null;
}

/** Consecutive events: event `first + i` is `bytes[ends[i-1] ?? 0 .. ends[i]]`. */
export interface StreamChunk {
  first: number;
  ends: number[];
  bytes: Uint8Array;
}

/** What a stream is started with. */
export type StreamMeta = Pick<
  StreamHead,
  "requestId" | "startedAt" | "model" | "conversationId" | "message"
>;

function headKey(owner: string, id: string): Deno.KvKey {
  return [...PREFIX, owner, id, "head"];
}

function chunkKey(owner: string, id: string, n: number): Deno.KvKey {
  return [...PREFIX, owner, id, "chunk", n];
}

/** Stream ids are UUIDs; anything else is not one of ours. */
export function isStreamId(id: string): boolean {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id);
}

/** Parses a `Last-Event-ID` / `?after=` value: a whole number, or null when malformed. */
export function parseEventId(value: string): number | null {
  const trimmed = value.trim();
  if (!/^\d{1,15}$/.test(trimmed)) return null;
  return Number(trimmed);
}

/** The writing side of one stream. */
export interface StreamWriter {
  readonly id: string;
  /** Numbers an SSE event, buffers it for KV, and returns it with its `id:` line. Synchronous. */
  push(event: string): Uint8Array;
  /** The final event was pushed: write what is left now, and mark the stream ended. */
  end(): void;
  /** Resolves once everything pushed so far is in KV (or failed to be). */
  flushed(): Promise<void>;
  /** KV commits and bytes of events written so far (for the docs' measurements). */
  readonly writes: { commits: number; bytes: number };
}

/** Options for {@link createStreamWriter}. */
export interface StreamWriterOptions {
  kv: Deno.Kv;
  owner: string;
  id?: string;
  clock: Clock;
  logger: Logger;
  settings: ResumeSettings;
  meta: StreamMeta;
  /** Called once the final commit is done (the live registry forgets the writer). */
  onEnd?: () => void;
}

/** Starts a resumable stream. Its first commit (the head) goes out with the first event. */
export function createStreamWriter(options: StreamWriterOptions): StreamWriter {
  const { kv, owner, clock, logger, settings, meta } = options;
  const id = options.id ?? crypto.randomUUID();
  const encoder = new TextEncoder();
  let seq = 0;
  let chunks = 0;
  let stored = 0;
  let pending: Uint8Array[] = [];
  let ended = false;
  let finalWritten = false;
  let lastCommitAt = clock.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  // Each commit checks the head is still the one this writer wrote last: a reader that took
  // this writer for dead (and cut the stream) wins, and the writer stops writing.
  let version: string | null = null;
  let lost = false;
  let chain: Promise<void> = Promise.resolve();
  const writes = { commits: 0, bytes: 0 };

  // The heartbeat: a silent upstream still shows the writer is alive. Started with the first
  // event (a call that fails before its stream costs no write), cleared at the end.
  const beatEvery = Math.max(1, Math.floor(settings.staleMs / 3));
  let heartbeat: ReturnType<typeof setInterval> | undefined;

  function flush(): Promise<void> {
    chain = chain.then(commit).catch((error) =>
      logger.warn("writing a resumable stream failed", { id, error: String(error) })
    );
    return chain;
  }

  async function commit(): Promise<void> {
    do {
      if (lost) return;
      const op = kv.atomic().check({ key: headKey(owner, id), versionstamp: version });
      for (let n = 0; n < CHUNKS_PER_COMMIT && pending.length > 0; n++) {
        const ends: number[] = [];
        let size = 0;
        let count = 0;
        while (
          count < pending.length && (count === 0 || size + pending[count].length <= CHUNK_BYTES)
        ) {
          size += pending[count].length;
          ends.push(size);
          count++;
        }
        const bytes = new Uint8Array(size);
        let at = 0;
        for (const event of pending.slice(0, count)) {
          bytes.set(event, at);
          at += event.length;
        }
        pending = pending.slice(count);
        const chunk: StreamChunk = { first: stored + 1, ends, bytes };
        op.set(chunkKey(owner, id, chunks++), chunk, {
          expireIn: settings.ttlMs + CHUNK_GRACE_MS,
        });
        stored += count;
        writes.bytes += size;
      }
      const now = clock.now();
      const last = ended && pending.length === 0;
      const head: StreamHead = {
        ...meta,
        seq: stored,
        chunks,
        state: last ? "ended" : "live",
        beatAt: now,
        expiresAt: last ? now + settings.ttlMs : null,
      };
      op.set(headKey(owner, id), head, { expireIn: settings.ttlMs + settings.staleMs });
      const result = await op.commit();
      writes.commits++;
      if (!result.ok) {
        lost = true;
        logger.warn("a resumable stream was declared cut while still being written", { id });
        options.onEnd?.();
        return;
      }
      version = result.versionstamp;
      lastCommitAt = now;
      if (last && !finalWritten) {
        finalWritten = true;
        options.onEnd?.();
      }
    } while (pending.length > 0);
  }

  return {
    id,
    writes,
    push(event) {
      const bytes = encoder.encode(`id: ${++seq}\n${event}`);
      if (ended) return bytes; // nothing after the final event is stored
      pending.push(bytes);
      if (seq === 1) {
        flush(); // the head exists as soon as possible
        heartbeat = setInterval(() => {
          if (!ended && clock.now() - lastCommitAt >= beatEvery) flush();
        }, beatEvery);
      } else if (timer === undefined) {
        timer = setTimeout(() => {
          timer = undefined;
          flush();
        }, settings.flushMs);
      }
      return bytes;
    },
    end() {
      if (ended) return;
      ended = true;
      clearInterval(heartbeat);
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      if (seq > 0) flush();
    },
    flushed: () => chain,
  };
}

/** What a resumed stream reports when its writer died; see {@link openResumedStream}. */
export interface CutStream {
  head: StreamHead;
  /** The text of the answer's buffered `text` events. */
  partialText: string;
}

/** Options for {@link openResumedStream}. */
export interface ResumeOptions {
  kv: Deno.Kv;
  owner: string;
  id: string;
  /** The last event id the client has; events after it are sent. */
  after: number;
  clock: Clock;
  settings: ResumeSettings;
  /** Sent after this much silence while following a live stream (ms; 0: never). */
  keepAliveMs: number;
  /** This instance's writer of the stream, if it has one: its pending events are awaited first. */
  local?: StreamWriter;
  /** Called once, by the one reader that declared the stream cut. */
  onCut?: (cut: CutStream) => Promise<void>;
  logger: Logger;
}

/**
 * The rest of a stream after event `after`: what is stored, then what is written next, until
 * the final event. Null when there is no such stream for this owner, or it has expired.
 */
export async function openResumedStream(
  options: ResumeOptions,
): Promise<ReadableStream<Uint8Array> | null> {
  const { kv, owner, id, clock, settings } = options;
  await options.local?.flushed();
  const first = await kv.get<StreamHead>(headKey(owner, id));
  if (!first.value || expired(first.value, clock.now())) return null;
  let head: Deno.KvEntryMaybe<StreamHead> = first;
  let nextChunk = 0;
  let last = options.after;
  let sentUpTo = 0;
  let cancelled = false;
  let lastSent = performance.now();
  let wake: (() => void) | undefined;
  let sleeper: ReturnType<typeof setTimeout> | undefined;
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      wake = resolve;
      sleeper = setTimeout(resolve, ms);
    });

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        if (cancelled) return;
        const value = head.value!;
        if (nextChunk < value.chunks) {
          const keys = [];
          for (let n = nextChunk; n < value.chunks && keys.length < 10; n++) {
            keys.push(chunkKey(owner, id, n));
          }
          const entries = await kv.getMany<StreamChunk[]>(keys);
          if (cancelled) return;
          const parts: Uint8Array[] = [];
          for (const entry of entries) {
            if (!entry.value) {
              // Chunks outlive their head; one gone means the stream is older than that.
              controller.enqueue(encodeEvent("error", "the buffered answer has expired"));
              controller.close();
              return;
            }
            const { first: start, ends, bytes } = entry.value;
            for (let i = 0; i < ends.length; i++) {
              if (start + i <= last) continue;
              parts.push(bytes.subarray(i === 0 ? 0 : ends[i - 1], ends[i]));
              sentUpTo = start + i;
            }
            last = Math.max(last, start + ends.length - 1);
          }
          nextChunk += entries.length;
          if (parts.length > 0) {
            controller.enqueue(concat(parts));
            lastSent = performance.now();
            return;
          }
          continue;
        }
        if (value.state !== "live") {
          // A client that got events the dead writer never stored has an id past the cut
          // event's: it still must not see a silent end.
          if (value.state === "cut" && sentUpTo < value.seq) {
            controller.enqueue(encodeEvent("error", CUT_MESSAGE));
          }
          controller.close();
          return;
        }
        if (clock.now() - value.beatAt > settings.staleMs) {
          await declareCut(head as Deno.KvEntry<StreamHead>);
        } else {
          await sleep(settings.flushMs);
          if (
            options.keepAliveMs > 0 && performance.now() - lastSent >= options.keepAliveMs
          ) {
            controller.enqueue(KEEP_ALIVE_COMMENT);
            lastSent = performance.now();
          }
        }
        if (cancelled) return;
        head = await kv.get<StreamHead>(headKey(owner, id));
        if (!head.value) {
          controller.enqueue(encodeEvent("error", "the buffered answer has expired"));
          controller.close();
          return;
        }
      }
    },
    cancel() {
      cancelled = true;
      if (sleeper !== undefined) clearTimeout(sleeper);
      wake?.();
    },
  }, { highWaterMark: 0 });

  /** Ends a stream whose writer died: one final `error` event, added by one reader only. */
  async function declareCut(entry: Deno.KvEntry<StreamHead>): Promise<void> {
    const value = entry.value;
    const now = clock.now();
    const event = new TextEncoder().encode(
      `id: ${value.seq + 1}\n` +
        sseEvent(
          "error",
          errorPayload("api_error", CUT_MESSAGE),
        ),
    );
    const chunk: StreamChunk = { first: value.seq + 1, ends: [event.length], bytes: event };
    const next: StreamHead = {
      ...value,
      seq: value.seq + 1,
      chunks: value.chunks + 1,
      state: "cut",
      expiresAt: now + settings.ttlMs,
    };
    const result = await kv.atomic()
      .check(entry)
      .set(chunkKey(owner, id, value.chunks), chunk, { expireIn: settings.ttlMs + CHUNK_GRACE_MS })
      .set(headKey(owner, id), next, { expireIn: settings.ttlMs })
      .commit();
    if (!result.ok || !options.onCut) return; // another reader (or the writer) got there first
    try {
      await options.onCut({
        head: next,
        partialText: await storedText(kv, owner, id, value.chunks),
      });
    } catch (error) {
      options.logger.warn("recording a cut stream failed", { id, error: String(error) });
    }
  }
}

/** Whether a stream's head says it is past its resumable time. */
function expired(head: StreamHead, now: number): boolean {
  return head.expiresAt !== null && head.expiresAt <= now;
}

/** The text of a stream's stored `text` events (chunks 0..count-1). */
async function storedText(kv: Deno.Kv, owner: string, id: string, count: number): Promise<string> {
  let text = "";
  for await (const entry of kv.list<StreamChunk>({ prefix: [...PREFIX, owner, id, "chunk"] })) {
    if (Number(entry.key.at(-1)) >= count) break;
    for (const event of decodeAll(entry.value.bytes)) {
      if (event.event !== "text") continue;
      try {
        text += String(JSON.parse(event.data).text ?? "");
      } catch {
        // not one of ours; skip it
      }
    }
  }
  return text;
}

function encodeEvent(name: string, message: string): Uint8Array {
  return new TextEncoder().encode(sseEvent(name, errorPayload("api_error", message)));
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const size = parts.reduce((sum, part) => sum + part.length, 0);
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * This instance's streams still being written, by id: a resume on the same instance waits for
 * their pending events instead of missing the last few milliseconds.
 */
export class LiveStreams {
  readonly #writers = new Map<string, StreamWriter>();
  add(writer: StreamWriter): void {
    this.#writers.set(writer.id, writer);
  }
  delete(id: string): void {
    this.#writers.delete(id);
  }
  get(id: string): StreamWriter | undefined {
    return this.#writers.get(id);
  }
}
