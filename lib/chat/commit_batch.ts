/**
 * One KV commit for the writes of many resumable streams: the streams of one instance flush on
 * the same ticks (see `createStreamWriter`), and what they submit in one turn of the event loop
 * goes out as one atomic operation. A commit's fixed cost dominates a stream's small write:
 * measured with SQLite, 183 µs of CPU per write committed alone, 43 µs in commits of 10.
 *
 * Each part keeps its own check (its head's versionstamp): when a batch fails because one
 * part's check failed (a reader declared that stream cut), each part is committed again on its
 * own, so only the stream that lost its check sees it fail.
 */

/** One stream's share of a commit: the check on its head, and what it sets. */
export interface CommitPart {
  check: Deno.AtomicCheck;
  sets: Array<{ key: Deno.KvKey; value: unknown; expireIn: number }>;
  /** About how many bytes it writes (the batch stays well under KV's 800 KiB per operation). */
  bytes: number;
}

/** Commits parts together; see the module doc. */
export interface CommitBatcher {
  /**
   * Commits `part` with the others submitted in this turn; resolves with its own result. With
   * `alone`, at once and on its own (a stream's last commit: nothing is left waiting on a timer
   * once its stream has ended).
   */
  commit(part: CommitPart, alone?: boolean): Promise<Deno.KvCommitResult | Deno.KvCommitError>;
}

/** Options for {@link createCommitBatcher}. */
export interface CommitBatcherOptions {
  /** Most parts per operation (10: the checks Deno Deploy's KV allowed per operation). */
  maxParts?: number;
  /** Most bytes per operation, unless a single part is larger. */
  maxBytes?: number;
}

interface Waiting {
  part: CommitPart;
  resolve(result: Deno.KvCommitResult | Deno.KvCommitError): void;
  reject(error: unknown): void;
}

/** Creates a batcher for `kv`. */
export function createCommitBatcher(
  kv: Deno.Kv,
  options: CommitBatcherOptions = {},
): CommitBatcher {
  const maxParts = options.maxParts ?? 10;
  const maxBytes = options.maxBytes ?? 400_000;
  const queue: Waiting[] = [];
  let running = false;

  function operation(parts: CommitPart[]): Deno.AtomicOperation {
    const op = kv.atomic();
    for (const part of parts) {
      op.check(part.check);
      for (const { key, value, expireIn } of part.sets) op.set(key, value, { expireIn });
    }
    return op;
  }

  async function run(): Promise<void> {
    try {
      while (queue.length > 0) {
        const batch: Waiting[] = [];
        let bytes = 0;
        while (
          queue.length > 0 && batch.length < maxParts &&
          (batch.length === 0 || bytes + queue[0].part.bytes <= maxBytes)
        ) {
          bytes += queue[0].part.bytes;
          batch.push(queue.shift()!);
        }
        try {
          const result = await operation(batch.map((w) => w.part)).commit();
          if (result.ok || batch.length === 1) {
            for (const waiting of batch) waiting.resolve(result);
            continue;
          }
        } catch (error) {
          if (batch.length === 1) {
            batch[0].reject(error);
            continue;
          }
        }
        // One part failed the batch: each on its own says which (a rare path: a false cut).
        for (const waiting of batch) {
          await operation([waiting.part]).commit().then(waiting.resolve, waiting.reject);
        }
      }
    } finally {
      running = false;
    }
  }

  return {
    commit(part, alone = false) {
      if (alone) return operation([part]).commit();
      return new Promise((resolve, reject) => {
        queue.push({ part, resolve, reject });
        if (!running) {
          running = true;
          // A zero timeout gathers the parts of the streams whose flush timers fire together.
          setTimeout(run, 0);
        }
      });
    },
  };
}
