/**
 * Joining byte chunks: the one helper sluice needs from a bytes library (std's `@std/bytes`
 * lives on JSR, which this project does not use).
 */

/** Concatenates chunks into one new array. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
