/**
 * Resumable `/chat` SSE streams: the events of an answer are numbered (`id:`) and written to
 * Deno KV as they are sent, so a client that lost its connection can ask any instance sharing
 * the KV for what it missed (`GET /chat/streams/{id}`) and then follow the rest live.
 *
 * Layout, under the owner (a key id, never a key), so another key's lookup finds nothing:
 * - `["sluice", "streams", owner, id, "head"]` → {@link StreamHead}: how many events and chunks
 *   are stored, whether the answer is still being written, and the writer's last sign of life;
 * - `["sluice", "streams", owner, id, "chunk", n]` → {@link StreamChunk}: consecutive events as
 *   UTF-8 bytes (at most {@link CHUNK_BYTES}, under KV's 64 KiB value limit) and where each ends;
 *   an event larger than that (a `/v1/messages` event is the upstream's, whatever its size) is
 *   split over `partial` chunks.
 *
 * The same streams serve `/chat` (its small events) and `/v1/messages` with `x-sluice-resumable`
 * (the upstream's events, each with an `id:` line added); the head says which (`endpoint`).
 *
 * The writer is off the byte path: `push` is synchronous (the client's bytes are enqueued
 * without waiting on KV), and events are written in batches, one atomic commit (chunks + head)
 * every `flushMs` at most, plus one right after the first event (a zero timeout, once the
 * bytes are on their way) and one at once for the last. While the
 * upstream is silent the head is rewritten every `staleMs / 3` as a heartbeat; a reader that
 * sees no sign of life for `staleMs` declares the answer cut (once, by a checked commit), adds
 * the final `error` event to the stream and records the partial answer.
 */
import type { Clock } from "../clock.ts";
import type { Logger } from "../log.ts";
import type { SseEvent } from "../stream/sse.ts";
import { decodeAll } from "../stream/sse.ts";
import { KEEP_ALIVE_COMMENT } from "../stream/tap.ts";
import { errorPayload, sseEvent } from "./encoding.ts";
import { type CommitBatcher, type CommitPart, createCommitBatcher } from "./commit_batch.ts";

const PREFIX = ["sluice", "streams"] as const;

const encoder = new TextEncoder();

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
  /** The last chunk ends inside an event (the rest of it was not stored yet). */
  open?: boolean;
  /** The route that started it: `/chat` (absent in heads written before) or `/v1/messages`. */
  endpoint?: string;
  requestId: string;
  startedAt: number;
  model: string | null;
  conversationId: string | null;
  /** The user's message, so a cut answer can be recorded in its conversation. */
  message: string | null;
}

/**
 * Consecutive events: event `first + i` is `bytes[ends[i-1] ?? 0 .. ends[i]]`. A `partial` chunk
 * holds only a piece of event `first` (its `ends` is empty); the event goes on in the next chunk,
 * whose first event is the same `first`.
 */
export interface StreamChunk {
  first: number;
  ends: number[];
  bytes: Uint8Array;
  partial?: boolean;
}

/** What a stream is started with. */
export type StreamMeta = Pick<
  StreamHead,
  "requestId" | "startedAt" | "model" | "conversationId" | "message" | "endpoint"
>;

/** Where this app's resumable streams are kept (only with Deno KV), shared by its routes. */
export interface ResumableStreams {
  kv: Deno.Kv;
  live: LiveStreams;
  /** One commit for the writes of streams that flush together. */
  batcher: CommitBatcher;
  /**
   * How to stop each `/chat` answer this instance is writing, by stream id, with the key that
   * started it: `DELETE /chat/streams/{id}` (a Stop button, which the server cannot otherwise
   * tell from a dropped connection that it should finish).
   */
  stops: Map<string, { owner: string; stop: () => Promise<boolean> }>;
}

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
  /**
   * Numbers an SSE event, buffers it for KV, and returns it with its `id:` line: first in a
   * string (one of sluice's own events), last in bytes (a whole event as the upstream sent it,
   * blank line included). Synchronous.
   */
  push(event: string | Uint8Array): Uint8Array;
  /** The final event was pushed: write what is left now, and mark the stream ended. */
  end(): void;
  /** Writes what is pending now; resolves once everything pushed so far is in KV (or failed to be). */
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
  /**
   * Given the commits still to come when the stream ends (`Lifecycle.track`): a graceful
   * shutdown waits for them before it closes KV, so the stream's end is not lost with it.
   */
  track?: (work: Promise<unknown>) => void;
  /** Commits with the instance's other streams (default: a batcher of its own). */
  batcher?: CommitBatcher;
}

/** Starts a resumable stream. Its first commit (the head) goes out with the first event. */
export function createStreamWriter(options: StreamWriterOptions): StreamWriter {
  const { clock, settings } = options;
  const id = options.id ?? crypto.randomUUID();
  const store = createStreamStore(options, id);
  let seq = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;

  // The heartbeat: a silent upstream still shows the writer is alive. Started with the first
  // event (a call that fails before its stream costs no write), cleared at the end.
  const beatEvery = Math.max(1, Math.floor(settings.staleMs / 3));
  let heartbeat: ReturnType<typeof setInterval> | undefined;

  return {
    id,
    writes: store.writes,
    push(event) {
      const bytes = numbered(++seq, event);
      if (store.ended) return bytes; // nothing after the final event is stored
      store.add(bytes);
      if (seq === 1) {
        // The head exists as soon as possible, but after the event is on its way: a commit
        // costs ~0.15 ms of this thread (measured), which must not delay the bytes it follows.
        timer = setTimeout(() => {
          timer = undefined;
          store.flush();
        }, 0);
        heartbeat = setInterval(() => {
          if (!store.ended && clock.now() - store.lastCommitAt >= beatEvery) store.flush();
        }, beatEvery);
      } else if (timer === undefined) {
        // On the instance's common ticks (multiples of flushMs), so that the streams flushing
        // in the same tick share one commit (commit_batch.ts).
        timer = setTimeout(() => {
          timer = undefined;
          store.flush();
        }, settings.flushMs - (clock.now() % settings.flushMs));
      }
      return bytes;
    },
    end() {
      if (store.ended) return;
      store.end();
      clearInterval(heartbeat);
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      if (seq === 0) return;
      // Flushed whether or not anyone tracks it (`track?.(flush())` would skip the flush).
      const written = store.flush();
      options.track?.(written);
    },
    flushed() {
      // A resume on this instance wants everything pushed so far: a commit still waiting for its
      // timer goes now.
      if (timer !== undefined) {
        clearTimeout(timer);
        timer = undefined;
        store.flush();
      }
      return store.chain;
    },
  };
}

/** The KV side of a stream writer: the events not stored yet, and the commits that store them. */
interface StreamStore {
  /** Adds a numbered event to what the next commit stores. */
  add(bytes: Uint8Array): void;
  /** After the final event: the commit that stores the rest marks the stream ended. */
  end(): void;
  readonly ended: boolean;
  /** When the head was last written (epoch ms on the writer's clock). */
  readonly lastCommitAt: number;
  readonly writes: { commits: number; bytes: number };
  /** Queues a commit of what is pending, after the commits already queued. */
  flush(): Promise<void>;
  /** The commits queued so far. */
  readonly chain: Promise<void>;
}

/** The commits of one stream: chunks of its pending events plus its head, one at a time. */
function createStreamStore(options: StreamWriterOptions, id: string): StreamStore {
  const { kv, owner, clock, logger, settings, meta } = options;
  const batcher = options.batcher ?? createCommitBatcher(kv);
  let chunks = 0;
  let stored = 0;
  let open = false;
  let pending: Uint8Array[] = [];
  let ended = false;
  let finalWritten = false;
  let lastCommitAt = clock.now();
  // Each commit checks the head is still the one this writer wrote last: a reader that took
  // this writer for dead (and cut the stream) wins, and the writer stops writing.
  let version: string | null = null;
  let lost = false;
  let chain: Promise<void> = Promise.resolve();
  const writes = { commits: 0, bytes: 0 };

  function flush(): Promise<void> {
    chain = chain.then(commit).catch((error) => {
      // What this commit held is gone, so no later head may claim it: the writer stops, and
      // readers declare the stream cut once its head goes stale.
      lost = true;
      logger.warn("writing a resumable stream failed", { id, error: String(error) });
      options.onEnd?.();
    });
    return chain;
  }

  async function commit(): Promise<void> {
    do {
      if (lost) return;
      const part = commitChunks(pending, { stored, chunks, open }, (n) => chunkKey(owner, id, n), {
        expireIn: settings.ttlMs + CHUNK_GRACE_MS,
      });
      ({ rest: pending, stored, chunks, open } = part);
      writes.bytes += part.bytes;
      const now = clock.now();
      const last = ended && pending.length === 0;
      part.sets.push(headSet(owner, id, meta, settings, { stored, chunks, open, last, now }));
      const result = await batcher.commit({
        check: { key: headKey(owner, id), versionstamp: version },
        sets: part.sets,
        bytes: part.bytes + 500,
      }, last);
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
    add: (bytes) => void pending.push(bytes),
    end: () => void (ended = true),
    get ended() {
      return ended;
    },
    get lastCommitAt() {
      return lastCommitAt;
    },
    writes,
    flush,
    get chain() {
      return chain;
    },
  };
}

/** A commit's write of the head: the stream as it stands once the commit's chunks are stored. */
function headSet(
  owner: string,
  id: string,
  meta: StreamMeta,
  settings: ResumeSettings,
  at: { stored: number; chunks: number; open: boolean; last: boolean; now: number },
): CommitPart["sets"][number] {
  const { stored, chunks, open, last, now } = at;
  const head: StreamHead = {
    ...meta,
    seq: stored,
    chunks,
    ...(open ? { open } : {}),
    state: last ? "ended" : "live",
    beatAt: now,
    expiresAt: last ? now + settings.ttlMs : null,
  };
  return { key: headKey(owner, id), value: head, expireIn: settings.ttlMs + settings.staleMs };
}

/**
 * The chunks of one commit: up to {@link CHUNKS_PER_COMMIT} of the `pending` events, as KV sets,
 * with what is left and where the stream then stands (`at` is where it stood).
 */
function commitChunks(
  pending: Uint8Array[],
  at: { stored: number; chunks: number; open: boolean },
  key: (n: number) => Deno.KvKey,
  { expireIn }: { expireIn: number },
): {
  sets: CommitPart["sets"];
  rest: Uint8Array[];
  stored: number;
  chunks: number;
  open: boolean;
  bytes: number;
} {
  const sets: CommitPart["sets"] = [];
  let { stored, chunks, open } = at;
  let bytes = 0;
  for (let n = 0; n < CHUNKS_PER_COMMIT && pending.length > 0; n++) {
    const next = takeChunk(pending, stored + 1);
    pending = next.rest;
    stored += next.events;
    open = next.chunk.partial === true;
    sets.push({ key: key(chunks++), value: next.chunk, expireIn });
    bytes += next.chunk.bytes.length;
  }
  return { sets, rest: pending, stored, chunks, open, bytes };
}

/**
 * An event with its id: first in a string (one of sluice's own events), last in bytes (a whole
 * event as the upstream sent it, blank line included), before the blank line that ends it: the
 * last id of an event is the one a client keeps, so ours wins over any the upstream sent.
 */
function numbered(seq: number, event: string | Uint8Array): Uint8Array {
  if (typeof event === "string") return encoder.encode(`id: ${seq}\n${event}`);
  const idLine = encoder.encode(`id: ${seq}\n`);
  const n = event.length;
  const blank = n >= 2 && event[n - 2] === 0x0d && event[n - 1] === 0x0a ? 2 : n > 0 ? 1 : 0;
  const bytes = new Uint8Array(idLine.length + n);
  bytes.set(event.subarray(0, n - blank));
  bytes.set(idLine, n - blank);
  bytes.set(event.subarray(n - blank), n - blank + idLine.length);
  return bytes;
}

/**
 * The next chunk of `pending` events (the first being event `first`): as many whole events as
 * fit in {@link CHUNK_BYTES}, or, when the first is larger than that, its first piece alone.
 */
function takeChunk(
  pending: Uint8Array[],
  first: number,
): { chunk: StreamChunk; rest: Uint8Array[]; events: number } {
  if (pending[0].length > CHUNK_BYTES) {
    // A copy: KV stores a view's whole underlying buffer, not just the view.
    const piece = pending[0].slice(0, CHUNK_BYTES);
    return {
      chunk: { first, ends: [], bytes: piece, partial: true },
      rest: [pending[0].subarray(CHUNK_BYTES), ...pending.slice(1)],
      events: 0,
    };
  }
  const ends: number[] = [];
  let size = 0;
  let count = 0;
  while (count < pending.length && (count === 0 || size + pending[count].length <= CHUNK_BYTES)) {
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
  return { chunk: { first, ends, bytes }, rest: pending.slice(count), events: count };
}

/** What a resumed stream reports when its writer died; see {@link openResumedStream}. */
export interface CutStream {
  head: StreamHead;
  /** The buffered events (the final `error` event not included). */
  events: SseEvent[];
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
  const sent = { last: options.after, upTo: 0 };
  let cancelled = false;
  let lastSent = performance.now();
  const sleeper = createSleeper();

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
          const parts = eventsAfter(entries, sent);
          if (!parts) {
            // Chunks outlive their head; one gone means the stream is older than that.
            controller.enqueue(encodeEvent("error", "the buffered answer has expired"));
            controller.close();
            return;
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
          if (value.state === "cut" && sent.upTo < value.seq) {
            controller.enqueue(encodeEvent("error", CUT_MESSAGE));
          }
          controller.close();
          return;
        }
        if (clock.now() - value.beatAt > settings.staleMs) {
          await declareCut(options, head as Deno.KvEntry<StreamHead>);
        } else {
          await sleeper.sleep(settings.flushMs);
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
      sleeper.wake();
    },
  }, { highWaterMark: 0 });
}

/** A sleep that a cancelled reader can cut short. */
function createSleeper(): { sleep(ms: number): Promise<void>; wake(): void } {
  let wake: (() => void) | undefined;
  let sleeper: ReturnType<typeof setTimeout> | undefined;
  return {
    sleep: (ms) =>
      new Promise<void>((resolve) => {
        wake = resolve;
        sleeper = setTimeout(resolve, ms);
      }),
    wake() {
      if (sleeper !== undefined) clearTimeout(sleeper);
      wake?.();
    },
  };
}

/**
 * The bytes of the events after `sent.last` in consecutive chunks (advancing `sent`: the last id
 * sent, and `upTo` the last whole event sent); null when one of the chunks has expired.
 */
function eventsAfter(
  entries: Deno.KvEntryMaybe<StreamChunk>[],
  sent: { last: number; upTo: number },
): Uint8Array[] | null {
  const parts: Uint8Array[] = [];
  for (const entry of entries) {
    if (!entry.value) return null;
    const { first: start, ends, bytes, partial } = entry.value;
    if (partial) {
      // The start of one large event: sent as it is, the rest follows in the next chunk.
      if (start > sent.last) parts.push(bytes);
      continue;
    }
    for (let i = 0; i < ends.length; i++) {
      if (start + i <= sent.last) continue;
      parts.push(bytes.subarray(i === 0 ? 0 : ends[i - 1], ends[i]));
      sent.upTo = start + i;
    }
    sent.last = Math.max(sent.last, start + ends.length - 1);
  }
  return parts;
}

/** Ends a stream whose writer died: one final `error` event, added by one reader only. */
async function declareCut(
  options: ResumeOptions,
  entry: Deno.KvEntry<StreamHead>,
): Promise<void> {
  const { kv, owner, id, clock, settings } = options;
  const value = entry.value;
  const now = clock.now();
  // Cut inside a large event: a blank line ends it (as the tap ends an upstream cut mid-event),
  // so it counts as one event and the error event after it has an id of its own.
  const closing = value.open ? 1 : 0;
  const event = new TextEncoder().encode(
    (closing ? "\n\n" : "") + `id: ${value.seq + 1 + closing}\n` +
      sseEvent(
        "error",
        errorPayload("api_error", CUT_MESSAGE),
      ),
  );
  const chunk: StreamChunk = {
    first: value.seq + 1,
    ends: closing ? [2, event.length] : [event.length],
    bytes: event,
  };
  const { open: _open, ...rest } = value;
  const next: StreamHead = {
    ...rest,
    seq: value.seq + 1 + closing,
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
      events: await storedEvents(kv, owner, id, value.chunks),
    });
  } catch (error) {
    options.logger.warn("recording a cut stream failed", { id, error: String(error) });
  }
}

/** Whether a stream's head says it is past its resumable time. */
function expired(head: StreamHead, now: number): boolean {
  return head.expiresAt !== null && head.expiresAt <= now;
}

/** The events of a stream's chunks 0..count-1 (a piece of an event at the end is left out). */
async function storedEvents(
  kv: Deno.Kv,
  owner: string,
  id: string,
  count: number,
): Promise<SseEvent[]> {
  const parts: Uint8Array[] = [];
  for await (const entry of kv.list<StreamChunk>({ prefix: [...PREFIX, owner, id, "chunk"] })) {
    if (Number(entry.key.at(-1)) >= count) break;
    parts.push(entry.value.bytes);
  }
  return decodeAll(concat(parts));
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
