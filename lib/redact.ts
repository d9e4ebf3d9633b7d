/**
 * Keeping secrets (the server's Anthropic key) out of what sluice writes: an upstream or a proxy
 * in front of it may echo the credential it was sent, in an error body, a 200 body, a header or
 * an SSE `error` event, and from there it would reach the client, the logs or the stats in KV.
 *
 * Every check is a plain substring search first: a secret-free value (nearly all of them) is
 * returned as it is, without a copy.
 */

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
  };
}
