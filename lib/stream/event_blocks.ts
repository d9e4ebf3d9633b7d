/**
 * Cuts an SSE byte stream into its blocks (an event or comments, with the blank line that ends
 * it), byte for byte, whatever the line endings (`\n`, `\r\n`, `\r`) and wherever the chunks
 * are cut.
 *
 * Hand-written: eventsource-parser hands over the parsed fields of an event, and a resumable
 * `/v1/messages` stream must pass on the upstream's own bytes, adding only an `id:` line before
 * each event.
 */
import { concatBytes } from "../bytes.ts";

const LF = 0x0a;
const CR = 0x0d;
const EMPTY = new Uint8Array(0);

/** Splits a byte stream into SSE blocks; see the module doc. */
export interface BlockSplitter {
  /** The blocks this chunk completes, in order (views of the bytes fed). */
  feed(chunk: Uint8Array): Uint8Array[];
  /** The stream ended: the last block if it was complete, and the bytes of an unended one. */
  end(): { blocks: Uint8Array[]; rest: Uint8Array };
}

/** Creates a {@link BlockSplitter}. */
export function createBlockSplitter(): BlockSplitter {
  let carry: Uint8Array = EMPTY;
  // Scan state, kept across chunks so that no byte is scanned twice.
  let lineStart = true; // the previous byte ended a line (or the block just began)
  let afterCr = false; // the previous byte was a CR that ended a line (a LF may follow)
  let crBlank = false; // a blank line ended by CR: the block ends after it (and its LF, if any)
  return {
    feed(chunk) {
      const bytes = carry.length > 0 ? concatBytes([carry, chunk]) : chunk;
      const blocks: Uint8Array[] = [];
      let start = 0;
      if (!crBlank && !afterCr && chunk.indexOf(CR) < 0) {
        // LF only (the API's streams): jump from line feed to line feed with the native
        // indexOf; a byte-by-byte loop was most of this layer's cost (~27 ns a byte, measured).
        let pos = carry.length;
        for (;;) {
          const lf = bytes.indexOf(LF, pos);
          if (lf < 0) {
            if (pos < bytes.length) lineStart = false;
            break;
          }
          if (lf === pos && lineStart) {
            blocks.push(bytes.subarray(start, lf + 1));
            start = lf + 1;
          }
          lineStart = true;
          pos = lf + 1;
        }
        carry = start < bytes.length ? bytes.slice(start) : EMPTY;
        return blocks;
      }
      for (let i = carry.length; i < bytes.length; i++) {
        const b = bytes[i];
        if (crBlank) {
          crBlank = false;
          const end = b === LF ? i + 1 : i;
          blocks.push(bytes.subarray(start, end));
          start = end;
          lineStart = true;
          afterCr = false;
          if (b === LF) continue;
        }
        if (b === LF) {
          if (afterCr) afterCr = false; // the second half of a CRLF
          else if (lineStart) {
            blocks.push(bytes.subarray(start, i + 1));
            start = i + 1;
          } else lineStart = true;
        } else if (b === CR) {
          if (lineStart) crBlank = true; // a blank line (after LF, CRLF or CR)
          else {
            lineStart = true;
            afterCr = true;
          }
        } else {
          lineStart = false;
          afterCr = false;
        }
      }
      carry = start < bytes.length ? bytes.slice(start) : EMPTY;
      return blocks;
    },
    end() {
      const last = carry;
      carry = EMPTY;
      if (crBlank) {
        crBlank = false;
        return { blocks: [last], rest: EMPTY };
      }
      return { blocks: [], rest: last };
    },
  };
}

/**
 * Whether a block is an event (it has a `data` field), rather than comments only (a keep-alive)
 * or a stray blank line, which have no id and nothing to replay.
 */
export function isEventBlock(block: Uint8Array): boolean {
  // Line by line, jumping with the native indexOf (a line ends at LF, CR or CRLF).
  let pos = 0;
  while (pos < block.length) {
    if (
      block[pos] === 0x64 && block[pos + 1] === 0x61 && block[pos + 2] === 0x74 &&
      block[pos + 3] === 0x61 &&
      (pos + 4 >= block.length || block[pos + 4] === 0x3a || block[pos + 4] === LF ||
        block[pos + 4] === CR)
    ) return true; // "data" then ":" or the end of the line
    const lf = block.indexOf(LF, pos);
    const cr = block.indexOf(CR, pos);
    const end = lf < 0 ? cr : cr < 0 ? lf : Math.min(lf, cr);
    if (end < 0) return false;
    pos = end + 1;
  }
  return false;
}
