/**
 * Watching a call while sluice waits for its answer (the upstream's headers, its retries, a whole
 * non-streamed body): the client leaving, or graceful shutdown's cut, aborts the upstream request,
 * and the call knows which of the two it was.
 */

/** A watched wait; see {@link watchWaiting}. */
export interface Waiting {
  /** Why the wait was abandoned: the client left, sluice is shutting down, or not (null). */
  readonly cause: "client" | "shutdown" | null;
  /** Stops watching: the answer is handed over (a stream's own cancel takes over then). */
  unwatch(): void;
}

/**
 * Aborts `controller` when `clientSignal` or `cut` aborts (at once when one already has), and
 * remembers which did first.
 */
export function watchWaiting(
  controller: AbortController,
  clientSignal?: AbortSignal,
  cut?: AbortSignal,
): Waiting {
  let cause: Waiting["cause"] = null;
  const onClientGone = () => {
    cause ??= "client";
    controller.abort();
  };
  const onCut = () => {
    cause ??= "shutdown";
    controller.abort(cut?.reason);
  };
  clientSignal?.addEventListener("abort", onClientGone, { once: true });
  cut?.addEventListener("abort", onCut, { once: true });
  if (cut?.aborted) onCut();
  else if (clientSignal?.aborted) onClientGone();
  return {
    get cause() {
      return cause;
    },
    unwatch() {
      clientSignal?.removeEventListener("abort", onClientGone);
      cut?.removeEventListener("abort", onCut);
    },
  };
}
