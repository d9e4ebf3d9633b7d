/**
 * Serving on every core: `workers` isolates (Web Workers), each a whole sluice (its app, its
 * stats sink and limiter, its own connection to the shared Deno KV) accepting on one port with
 * `SO_REUSEPORT`, so the kernel spreads connections over them. What `deno serve --parallel`
 * does, kept inside `deno run main.ts` so the configuration stays in the environment (PORT,
 * HOSTNAME) and Deno 2.5 runs it the same way.
 *
 * What the isolates share is in KV: stats add up there, conversations and resumable streams
 * live there, limits reconcile there (see limits.ts for what that costs in accuracy). What one
 * isolate's `/stats` cannot see yet: the other isolates' records of the last
 * `SLUICE_STATS_WRITE_MS`.
 *
 * The main thread owns the signals: on SIGINT/SIGTERM every worker runs its graceful shutdown
 * (drain, grace, flush, close KV) and reports; the process exits when all have (a second signal
 * exits at once).
 */
import type { Config } from "../config.ts";
import { StartError } from "../serve.ts";

/** Main thread → worker. */
export type ToWorker =
  | {
    type: "start";
    env: Record<string, string>;
    /** The port to bind: the configured one for the first worker, the first's for the others. */
    port: number;
    workers: number;
  }
  /** Log the start-up lines (sent to the first worker once every worker listens). */
  | { type: "announce" }
  | { type: "shutdown"; signal: string };

/** Worker → main thread. */
export type ToMain =
  | { type: "listening"; port: number }
  | { type: "failed"; message: string }
  | { type: "stopped"; code: number };

/** How many workers `setting` asks for: "auto" is one per core. */
export function workerCount(setting: number | "auto" | undefined): number {
  if (setting === "auto") return Math.max(1, navigator.hardwareConcurrency || 1);
  return setting ?? 1;
}

/** A started worker: whether it came up, and its exit code once it has stopped. */
function startWorker(message: ToWorker & { type: "start" }) {
  const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
  let up!: (reply: ToMain) => void;
  let down!: (code: number) => void;
  const started = new Promise<ToMain>((resolve) => (up = resolve));
  const stopped = new Promise<number>((resolve) => (down = resolve));
  worker.onmessage = (event: MessageEvent<ToMain>) => {
    const reply = event.data;
    if (reply.type === "stopped") down(reply.code);
    else up(reply);
  };
  worker.onerror = (event) => {
    event.preventDefault();
    up({ type: "failed", message: event.message });
    down(1);
  };
  worker.postMessage(message);
  return { worker, started, stopped };
}

/**
 * Starts `count` workers on `config`'s port (the first binds it, so a port of 0 becomes one real
 * port the others share) and hooks the signals. Throws if a worker cannot start.
 */
export async function startWorkers(
  config: Config,
  env: Record<string, string>,
  count: number,
): Promise<void> {
  if (count > 1 && config.kvPath === ":memory:") {
    // Each isolate would open a store of its own: stats, limits, budgets and conversations
    // would split between them, each answer showing one worker's share.
    throw new StartError(
      `SLUICE_KV_PATH=:memory: gives each of the ${count} workers a store of its own; ` +
        "use a file (the default), or SLUICE_WORKERS=1",
    );
  }
  const started: ReturnType<typeof startWorker>[] = [];
  // Hooked first: a signal during start-up stops the workers started so far.
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) Deno.exit(1);
    stopping = true;
    for (const { worker } of started) worker.postMessage({ type: "shutdown", signal });
    const codes = await Promise.all(started.map((w) => w.stopped));
    Deno.exit(Math.max(0, ...codes));
  };
  const signals =
    (Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"]) as Deno.Signal[];
  for (const signal of signals) Deno.addSignalListener(signal, () => void stop(signal));

  let port = config.port;
  for (let i = 0; i < count && !stopping; i++) {
    const worker = startWorker({ type: "start", env, port, workers: count });
    started.push(worker);
    const reply = await worker.started;
    if (reply.type !== "listening") {
      for (const { worker } of started) worker.terminate();
      const why = reply.type === "failed" ? reply.message : JSON.stringify(reply);
      throw new StartError(`worker ${i + 1} of ${count} did not start: ${why}`);
    }
    port = reply.port;
  }
  if (!stopping) started[0].worker.postMessage({ type: "announce" });
}
