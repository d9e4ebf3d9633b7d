/**
 * Keeping secrets (the server's Anthropic key) out of what sluice writes: an upstream or a proxy
 * in front of it may echo the credential it was sent, in an error body, a 200 body, a header or
 * an SSE `error` event, and from there it would reach the client, the logs or the stats in KV.
 *
 * Every check is a plain substring search first: a secret-free value (nearly all of them) is
 * returned as it is, without a copy.
 */
import { concatBytes } from "./bytes.ts";

/** What replaces a secret. */
export const REDACTED = "[redacted]";

/** Removes the secrets it was made with from text, bytes, headers and JSON-able values. */
export interface Redactor {
  /** Whether there is any secret to remove (replay mode has none). */
  readonly active: boolean;
  text(text: string): string;
  /** `bytes` as UTF-8 with each secret replaced; the same array when none occurs. */
  bytes(bytes: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer>;
  /** `headers` with each secret replaced in the values; the same object when none occurs. */
  headers(headers: Headers): Headers;
  /** A JSON-able value (a stats record, say) with each secret replaced in its strings and keys. */
  value<T>(value: T): T;
  /**
   * A redactor for one stream's chunks, or undefined when there is no secret: a secret split
   * across chunks is caught too (see {@link ChunkRedactor}). Made for the one secret an upstream
   * can echo, the server's key: with several, one that begins inside another's start may be
   * missed.
   */
  chunks(): ChunkRedactor | undefined;
}

/**
 * Removes secrets from a stream chunk by chunk. A chunk's bytes go on at once, except a tail of
 * more than three bytes that could be the start of a secret: it waits for the next chunk (inside
 * an SSE event, never at its end, since no secret begins with a line break), so a secret split
 * across two chunks is replaced too. Hand-written: the text redactor needs the whole value, and
 * decoding every chunk to search it would cost a string per chunk on the stream's path.
 */
export interface ChunkRedactor {
  /** The bytes to send now: `chunk` itself when it holds no secret and ends in no secret's start. */
  push(chunk: Uint8Array): Uint8Array;
  /** The bytes still held, once the stream is over (never a secret: a secret is whole). */
  end(): Uint8Array;
}

/** A redactor for `secrets`; values shorter than 8 characters are not secrets (nor matchable). */
export function createRedactor(secrets: readonly (string | undefined)[]): Redactor {
  const list = secrets.filter((s): s is string => typeof s === "string" && s.length >= 8);
  const has = (text: string) => list.some((secret) => text.includes(secret));
  const replace = (text: string) => list.reduce((t, s) => t.split(s).join(REDACTED), text);
  const text = (value: string) => (has(value) ? replace(value) : value);
  return {
    active: list.length > 0,
    text,
    bytes(bytes) {
      if (list.length === 0) return bytes;
      const decoded = new TextDecoder().decode(bytes);
      return has(decoded) ? new TextEncoder().encode(replace(decoded)) : bytes;
    },
    headers(headers) {
      if (list.length === 0) return headers;
      let dirty = false;
      headers.forEach((value) => (dirty ||= has(value)));
      if (!dirty) return headers;
      const clean = new Headers();
      headers.forEach((value, name) => clean.append(name, text(value)));
      return clean;
    },
    value(value) {
      if (list.length === 0) return value;
      const json = JSON.stringify(value);
      return json !== undefined && has(json) ? JSON.parse(replace(json)) : value;
    },
    chunks() {
      return list.length === 0 ? undefined : createChunkRedactor(list);
    },
  };
}

const EMPTY = new Uint8Array(0);

/**
 * How many bytes of a secret's start may reach the client before the redactor knows it is one:
 * a chunk that ends in at most this much of a secret's start is sent whole, and the rest of the
 * secret, if the next chunk brings it, is replaced there (the client sees `sk-[redacted]`). Real
 * streams' chunks end at event boundaries, so holding any tail that looks like a key's start
 * (an `s` at the end of a chunk) would re-frame streams for nothing; three bytes are `sk-`, the
 * part every Anthropic key shares, and no secret is shorter than 8 characters.
 */
const SENT_PREFIX_MAX = 3;

function createChunkRedactor(secrets: readonly string[]): ChunkRedactor {
  const encoder = new TextEncoder();
  const patterns = secrets.map((secret) => encoder.encode(secret));
  const firsts = [...new Set(patterns.map((pattern) => pattern[0]))];
  const replacement = encoder.encode(REDACTED);
  /**
   * The end of the stream so far that may be a secret's start, and how many of its bytes the
   * client has already (at most SENT_PREFIX_MAX; the rest waits for the next chunk).
   */
  let pending: Uint8Array = EMPTY;
  let pendingSent = 0;
  /** Where a secret may start in `data` from `from` on (a native search per first byte). */
  const candidate = (data: Uint8Array, from: number) => {
    let next = -1;
    for (const first of firsts) {
      const at = data.indexOf(first, from);
      if (at !== -1 && (next === -1 || at < next)) next = at;
    }
    return next;
  };
  /** At `at`: the length of a whole secret, -1 when `data` ends inside one, else 0. */
  const matchAt = (data: Uint8Array, at: number) => {
    let partial = false;
    for (const pattern of patterns) {
      let k = 0;
      while (k < pattern.length && at + k < data.length && data[at + k] === pattern[k]) k++;
      if (k === pattern.length) return k;
      if (at + k === data.length) partial = true;
    }
    return partial ? -1 : 0;
  };
  return {
    push(chunk) {
      const data = pending.length > 0 ? concatBytes([pending, chunk]) : chunk;
      const sent = pendingSent; // the first `sent` bytes of `data` are the client's already
      pending = EMPTY;
      pendingSent = 0;
      const parts: Uint8Array[] = [];
      const keep = (from: number, to: number) => {
        const start = Math.max(from, sent);
        if (to > start) parts.push(data.subarray(start, to));
      };
      let from = 0;
      let end = data.length;
      for (let at = candidate(data, 0); at !== -1;) {
        const length = matchAt(data, at);
        if (length > 0) {
          keep(from, at);
          parts.push(replacement);
          from = at + length;
          at = candidate(data, from);
        } else if (length === -1) {
          // The data ends inside what may be a secret: a short start goes now, a longer one waits.
          pending = data.slice(at);
          if (data.length - at > SENT_PREFIX_MAX) {
            pendingSent = Math.max(0, sent - at);
            end = at;
          } else pendingSent = pending.length;
          break;
        } else at = candidate(data, at + 1);
      }
      if (from === 0 && sent === 0 && end === data.length) return data;
      keep(from, end);
      return parts.length === 1 ? parts[0] : concatBytes(parts);
    },
    end() {
      const rest = pending.subarray(pendingSent);
      pending = EMPTY;
      pendingSent = 0;
      return rest;
    },
  };
}
