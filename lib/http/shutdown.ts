/**
 * Graceful shutdown. On SIGINT or SIGTERM sluice stops accepting connections, lets running
 * requests finish for a grace period, then ends the streams still running with a well-formed SSE
 * `error` event (never a cut connection) and refuses every request still waiting for its answer
 * with a 503 in the API's error shape, waits for the last stats records, writes them (`close`),
 * closes KV and exits; each step after the grace period is bounded.
 *
 * The pieces: a {@link Lifecycle} the app is built with (it tracks stats records and can cut the
 * streams it guards), {@link lifecycleMiddleware} that guards streamed response bodies, and
 * {@link installShutdown} that main.ts calls with the `Deno.serve` server.
 */
import type { MiddlewareHandler } from "hono";
import { ServerShutdownError, shutdownRefusal, sseErrorEvent } from "../errors.ts";
import { errorLine } from "../chat/encoding.ts";
import type { Logger } from "../log.ts";
import { createBoundaryTracker } from "../stream/sse.ts";

/** What running requests share with the shutdown sequence. */
export interface Lifecycle {
  /** Aborted when the grace period is over: guarded streams end at once. */
  readonly cut: AbortSignal;
  /** True once shutdown has begun (health answers 503 so load balancers stop sending). */
  readonly draining: boolean;
  /** Marks the start of shutdown. */
  beginDrain(): void;
  /** Remembers work that must finish before exit (a stats record); never rejects. */
  track(work: Promise<unknown>): void;
  /** Streams being guarded now. */
  active(): number;
  /** Ends every guarded stream now (with an SSE error event where the stream is SSE). */
  cutStreams(reason?: string): void;
  /** Waits for tracked work, at most `timeoutMs`; resolves to the number still pending. */
  settle(timeoutMs: number): Promise<number>;
  /** Wraps a streamed body so that {@link Lifecycle.cutStreams} can end it cleanly. */
  guard(body: ReadableStream<Uint8Array>, sse: boolean): ReadableStream<Uint8Array>;
  /**
   * Takes in a body that ends itself when {@link Lifecycle.cut} aborts (the proxied SSE tap):
   * counted as active until `done` settles, and never wrapped by {@link lifecycleMiddleware}.
   */
  adopt(body: ReadableStream<Uint8Array>, done: Promise<unknown>): void;
  /** Whether `body` was adopted. */
  adopted(body: ReadableStream<Uint8Array>): boolean;
}

/** Creates a lifecycle. */
export function createLifecycle(): Lifecycle {
  const controller = new AbortController();
  const pending = new Set<Promise<unknown>>();
  const adopted = new WeakSet<ReadableStream<Uint8Array>>();
  let active = 0;
  let draining = false;
  return {
    cut: controller.signal,
    get draining() {
      return draining;
    },
    beginDrain() {
      draining = true;
    },
    track(work) {
      const settled = work.then(() => {}, () => {}).finally(() => pending.delete(settled));
      pending.add(settled);
    },
    active: () => active,
    cutStreams(reason = "sluice is shutting down") {
      if (!controller.signal.aborted) controller.abort(new ServerShutdownError(reason));
    },
    async settle(timeoutMs) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
      await Promise.race([Promise.all([...pending]), timeout]);
      clearTimeout(timer);
      return pending.size;
    },
    guard(body, sse) {
      active++;
      return guardStream(body, sse, controller.signal, () => active--);
    },
    adopt(body, done) {
      active++;
      adopted.add(body);
      done.then(() => active--, () => active--);
    },
    adopted: (body) => adopted.has(body),
  };
}

/**
 * Forwards `body`; when `cut` aborts, cancels it (the reason reaches the tap, which aborts the
 * upstream and records the request as incomplete) and ends the client's stream: SSE with an
 * `error` event after the current event, anything else by failing the stream.
 */
function guardStream(
  body: ReadableStream<Uint8Array>,
  sse: boolean,
  cut: AbortSignal,
  onEnd: () => void,
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  const boundary = createBoundaryTracker();
  let ended = false;
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const end = () => {
    if (ended) return false;
    ended = true;
    cut.removeEventListener("abort", onCut);
    onEnd();
    return true;
  };
  function onCut() {
    if (!end()) return;
    const reason = cut.reason instanceof Error ? cut.reason : new ServerShutdownError();
    reader.cancel(reason).catch(() => {});
    // Plain text (`/chat` for curl) ends the way its other failures do, with a marked error
    // line: an errored body made Deno print a stack trace per cut stream.
    const last = sse
      ? (boundary.atBoundary() ? "" : "\n\n") + sseErrorEvent("api_error", reason.message)
      : "\n" + errorLine("api_error", reason.message);
    controller.enqueue(new TextEncoder().encode(last));
    controller.close();
  }
  return new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
      if (cut.aborted) queueMicrotask(onCut);
      else cut.addEventListener("abort", onCut, { once: true });
    },
    async pull(c) {
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await reader.read();
      } catch (error) {
        if (end()) c.error(error);
        return;
      }
      if (ended) return;
      if (result.done) {
        end();
        c.close();
        return;
      }
      boundary.see(result.value);
      c.enqueue(result.value);
    },
    cancel(reason) {
      end();
      return reader.cancel(reason).catch(() => {});
    },
  }, { highWaterMark: 0 });
}

/**
 * Guards streamed responses (SSE and plain text streams) with `lifecycle`, and ends every request
 * still without an answer when the cut comes (one waiting for KV, say; the calls that wait for
 * the upstream refuse themselves too, and abort it): a 503 in the error shape of its path.
 */
export function lifecycleMiddleware(lifecycle: Lifecycle): MiddlewareHandler {
  return async (c, next) => {
    if (lifecycle.cut.aborted) throw shutdownRefusal();
    let onCut!: () => void;
    const cut = new Promise<"cut">((resolve) => (onCut = () => resolve("cut")));
    lifecycle.cut.addEventListener("abort", onCut, { once: true });
    const work = next();
    try {
      if ((await Promise.race([work, cut])) === "cut") {
        work.catch(() => {}); // what it does now reaches nobody
        throw shutdownRefusal();
      }
    } finally {
      lifecycle.cut.removeEventListener("abort", onCut);
    }
    const type = c.res.headers.get("content-type") ?? "";
    const sse = type.includes("text/event-stream");
    // JSON answers are whole before they are sent; only open-ended streams need guarding, and
    // not those that guard themselves.
    if (
      c.res.body && (sse || type.startsWith("text/plain")) && !lifecycle.adopted(c.res.body)
    ) {
      c.res = new Response(lifecycle.guard(c.res.body, sse), c.res);
    }
  };
}

/** The part of `Deno.HttpServer` shutdown uses. */
export interface ShutdownServer {
  shutdown(): Promise<void>;
  readonly finished: Promise<void>;
}

/** Options for {@link installShutdown}. */
export interface ShutdownOptions {
  server: ShutdownServer;
  lifecycle: Lifecycle;
  logger: Logger;
  /** How long running streams may go on after the signal (ms). */
  graceMs: number;
  /**
   * After the grace period, how long each of the three last steps may take (ms): the cut requests
   * ending, the last stats records arriving, their write and closing KV. Default 1000, so the
   * process exits at most `graceMs + 3 * flushMs` after the signal.
   */
  flushMs?: number;
  /** Runs last, before exit: close KV and the like. */
  close?: () => void | Promise<void>;
  /** Default SIGINT and SIGTERM (only SIGINT on Windows). */
  signals?: Deno.Signal[];
  /** Default `Deno.exit`. */
  exit?: (code: number) => void;
}

/** Default of {@link ShutdownOptions.flushMs}. */
export const DEFAULT_FLUSH_MS = 1000;

/** A running shutdown handler: `run` starts the sequence (signals call it), `dispose` unhooks. */
export interface ShutdownHandle {
  run(signal?: string): Promise<void>;
  dispose(): void;
}

/**
 * Hooks the signals to a graceful shutdown: stop accepting (`server.shutdown()`), wait for
 * running requests up to `graceMs`, cut what still runs, flush, close, exit 0, at most
 * `graceMs + 3 * flushMs` after the signal. A second signal exits at once with code 1.
 */
export function installShutdown(options: ShutdownOptions): ShutdownHandle {
  const { server, lifecycle, logger } = options;
  const exit = options.exit ?? ((code: number) => Deno.exit(code));
  const signals = options.signals ??
    (Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"]) as Deno.Signal[];
  let running: Promise<void> | undefined;

  async function sequence(signal: string) {
    logger.info(
      `${signal}: shutting down; no new connections, ${lifecycle.active()} running stream(s) ` +
        `have ${options.graceMs} ms to finish`,
    );
    lifecycle.beginDrain();
    const drained = server.shutdown();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise<"grace">((resolve) => {
      timer = setTimeout(() => resolve("grace"), options.graceMs);
    });
    const first = await Promise.race([drained.then(() => "drained" as const), grace]);
    clearTimeout(timer);
    const flushMs = options.flushMs ?? DEFAULT_FLUSH_MS;
    if (first === "grace") {
      logger.warn(
        `grace period over: ending ${lifecycle.active()} stream(s) with an error event ` +
          "and refusing the requests still waiting (503)",
      );
      lifecycle.cutStreams();
      // Every request ends at the cut; should one not, the process does not wait for it.
      if (!(await withTimeout(drained, flushMs))) {
        logger.warn("some connections were still open after the cut; exiting anyway");
      }
    }
    const left = await lifecycle.settle(flushMs);
    if (left > 0) logger.warn(`${left} stats record(s) did not arrive before exit`);
    if (options.close) {
      // Bounded too: a store that hangs must not keep a stopped server alive.
      const closed = await withTimeout(Promise.resolve(options.close()), flushMs);
      if (!closed) logger.warn("closing the stores took too long; exiting anyway");
    }
    logger.info("sluice stopped");
    exit(0);
  }

  const handlers = signals.map((signal) => {
    const handler = () => {
      if (running) {
        logger.warn(`${signal} again: exiting now`);
        exit(1);
        return;
      }
      running = guarded(signal);
    };
    Deno.addSignalListener(signal, handler);
    return [signal, handler] as const;
  });

  /** The sequence, never rejecting: a failure still ends the process, with code 1. */
  function guarded(signal: string): Promise<void> {
    return sequence(signal).catch((error) => {
      logger.error("shutdown failed", { error: String(error) });
      exit(1);
    });
  }

  return {
    run(signal = "shutdown") {
      return running ??= guarded(signal);
    },
    dispose() {
      for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
    },
  };
}

/** Resolves true when `work` ends within `ms`, false otherwise. */
async function withTimeout(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([work.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
