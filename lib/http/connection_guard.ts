/**
 * The connection guard: a small TCP front that owns the public port and hands every connection
 * to the real `Deno.serve` server on a private loopback port, so sluice can do what `Deno.serve`
 * cannot: drop a client whose request head does not arrive within a deadline (slowloris: headers
 * dripped a byte at a time, or half a head and then silence), close connections idle too long,
 * and cap the connections one address holds open.
 *
 * Hand-written because nothing else does it for `Deno.serve`: it has no header timeout, no
 * connection limit and gives handlers no handle on their connection (2.5 and 2.9), and
 * `node:http`'s `headersTimeout`/`requestTimeout` are ignored in Deno (a dripping client was
 * still connected after 8 s with `headersTimeout: 2000`). See docs/hardening.md.
 *
 * The front parses no HTTP. It learns where each request is from the inner server itself: the
 * front's socket to the inner server has a local port equal to the `remoteAddr.port` the inner
 * handler sees, so the handler, wrapped here, marks its connection as "in a request" when it is
 * called (the head is complete) and as idle again when `info.completed` settles (the response is
 * sent or failed). Per connection:
 *
 * - idle (just opened, or after a response): a timer of `headerTimeoutMs`; if it fires, the
 *   connection is closed without a word (as an idle keep-alive connection is everywhere);
 * - the first client byte while idle starts a request head: the timer is re-armed once, from that
 *   byte (dripping does not extend it); if it fires before the handler is called, the client gets
 *   a raw `408 timeout_error` and both sockets are closed;
 * - while a request runs, no timer: a long streamed answer or a slow body is not cut here (the
 *   body has its own deadline, body_deadline.ts).
 *
 * The handler also sees the real client's address as `info.remoteAddr` (Hono's `c.env`, which
 * the loopback-only rule reads), never the front's 127.0.0.1. A connection to the inner port that
 * did not come through the front is refused with a 403.
 */
import { errorResponse, rawErrorResponse } from "../errors.ts";
import type { Logger } from "../log.ts";

/** Options for {@link serveGuarded}. */
export interface ConnectionGuardOptions {
  /** The public address to listen on. */
  hostname: string;
  port: number;
  /** `SO_REUSEPORT` on the public port (workers: each runs its own guard on one port). */
  reusePort?: boolean;
  /**
   * Longest a request head may take from its first byte, and longest a connection may sit idle
   * between requests (ms; 0: no limit).
   */
  headerTimeoutMs: number;
  /** Connections one client address may hold open at once (0: no limit). */
  maxConnectionsPerAddress: number;
  logger: Logger;
  /** Called with the public address once listening. */
  onListen?: (addr: Deno.NetAddr) => void;
}

/** A guarded server: the part of `Deno.HttpServer` that sluice uses. */
export interface GuardedServer {
  /** The public address. */
  readonly addr: Deno.NetAddr;
  /** The inner server's private loopback address. */
  readonly inner: Deno.NetAddr;
  /** Connections open through the front now. */
  connections(): number;
  /**
   * Stops accepting, closes connections between requests at once, lets the inner server finish
   * the running ones (`Deno.HttpServer.shutdown`), then closes what is left.
   */
  shutdown(): Promise<void>;
  /** Settles once the guard and the inner server have stopped and every socket is closed. */
  readonly finished: Promise<void>;
}

/** How long a refused client gets to read its answer before the socket is closed (ms). */
const LINGER_MS = 500;
/** Read sizes: client → server carries heads and bodies, server → client the answers. */
const CLIENT_READ_BYTES = 8 * 1024;
const SERVER_READ_BYTES = 16 * 1024;

/**
 * Serves `handler` behind the connection guard on `options.hostname:port`. Throws when the public
 * address cannot be bound (the caller may serve without the guard).
 */
export function serveGuarded(
  options: ConnectionGuardOptions,
  handler: Deno.ServeHandler<Deno.NetAddr>,
): GuardedServer {
  const listener = Deno.listen({
    transport: "tcp",
    hostname: options.hostname,
    port: options.port,
    reusePort: options.reusePort,
  });
  const table = createConnectionTable(options);
  let inner: Deno.HttpServer<Deno.NetAddr>;
  try {
    inner = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, table.wrap(handler));
  } catch (error) {
    listener.close();
    throw error;
  }
  const accepting = acceptLoop(listener, table, inner.addr.port, options.logger);
  let stopped!: () => void;
  const finished = new Promise<void>((resolve) => (stopped = resolve));
  let stopping: Promise<void> | undefined;
  options.onListen?.(listener.addr);
  return {
    addr: listener.addr,
    inner: inner.addr,
    connections: () => table.size(),
    finished,
    shutdown() {
      return stopping ??= (async () => {
        table.stop();
        closeQuietly(listener);
        await inner.shutdown();
        await accepting;
        // The inner server has closed its side of every connection: each front ends once it has
        // passed the last bytes on. What is left after that is closed.
        await table.settle(LINGER_MS);
        await table.closeAll();
        stopped();
      })();
    },
  };
}

/** Accepts until the listener is closed; each connection goes to `table`. */
async function acceptLoop(
  listener: Deno.TcpListener,
  table: ConnectionTable,
  innerPort: number,
  logger: Logger,
): Promise<void> {
  while (!table.stopped()) {
    let client: Deno.TcpConn;
    try {
      client = await listener.accept();
    } catch (error) {
      if (table.stopped()) return;
      // Out of file descriptors, say: keep serving the connections already open.
      logger.warn(`connection guard: accept failed: ${String(error)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
      continue;
    }
    table.open(client, innerPort);
  }
}

/** One client connection through the front. */
interface Front {
  readonly client: Deno.TcpConn;
  /** The client's address, which the app sees as `remoteAddr`. */
  readonly address: Deno.NetAddr;
  inner?: Deno.TcpConn;
  innerPort?: number;
  /** Requests being handled now (HTTP/1.1: at most one). */
  inFlight: number;
  /** Client bytes arrived while idle: a request head is on its way. */
  awaitingHead: boolean;
  ending: boolean;
  timer?: ReturnType<typeof setTimeout>;
  /** The client → server copy; once ending, it reads and drops what the client still sends. */
  upstream?: Promise<unknown>;
}

type ConnectionTable = ReturnType<typeof createConnectionTable>;

/** The open connections: by the front's local port towards the inner server, and by address. */
function createConnectionTable(options: ConnectionGuardOptions) {
  const byPort = new Map<number, Front>();
  const running = new Set<Promise<void>>();
  let stopped = false;
  function track(work: Promise<void>) {
    running.add(work);
    work.finally(() => running.delete(work));
  }
  const states = createFrontStates(options, byPort, track, () => stopped);
  const addresses = createAddressCounts(options, track);
  return {
    wrap: (handler: Deno.ServeHandler<Deno.NetAddr>) =>
      guardHandler(handler, byPort, states.started, states.done),
    open(client: Deno.TcpConn, innerPort: number) {
      if (stopped || !addresses.admit(client)) return;
      const front: Front = {
        client,
        address: client.remoteAddr,
        inFlight: 0,
        awaitingHead: false,
        ending: false,
      };
      track(
        connect(front, innerPort, { byPort, ...states })
          .finally(() => addresses.release(front.address.hostname)),
      );
    },
    size: () => addresses.size(),
    stopped: () => stopped,
    /**
     * Shutdown begins: no more connections; those part-way through a request head close now, and
     * the server behind is told that no more requests come on the idle ones (their sending side
     * is closed), so it closes them after whatever it still writes: closing them here could lose
     * an answer's last bytes, still on their way through. Running ones close after their answer.
     */
    stop() {
      stopped = true;
      for (const front of byPort.values()) states.drain(front);
    },
    /** Waits for the connections to end by themselves, at most `ms`. */
    async settle(ms: number) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise((resolve) => (timer = setTimeout(resolve, ms)));
      await Promise.race([Promise.all([...running]), late]);
      clearTimeout(timer);
    },
    async closeAll() {
      stopped = true;
      for (const front of byPort.values()) states.end(front);
      await Promise.all([...running]);
    },
  };
}

/**
 * Each connection's state and its timer: idle (timer: close), part-way through a request head
 * (timer: 408), in a request (no timer). See the module's comment.
 */
function createFrontStates(
  options: ConnectionGuardOptions,
  byPort: Map<number, Front>,
  track: (work: Promise<void>) => void,
  stopped: () => boolean,
) {
  const { logger, headerTimeoutMs } = options;
  const arm = (front: Front, onFire: (front: Front) => void) => {
    clearTimeout(front.timer);
    front.timer = headerTimeoutMs > 0
      ? setTimeout(() => onFire(front), headerTimeoutMs)
      : undefined;
  };
  const timeout = (front: Front) => {
    logger.warn(
      `dropped a connection from ${front.address.hostname} whose request head did not arrive ` +
        `within ${headerTimeoutMs} ms (408, SLUICE_HEADER_TIMEOUT_MS)`,
    );
    end(front, headTimeout(headerTimeoutMs));
  };
  function end(front: Front, reply?: Uint8Array) {
    if (front.ending) return;
    front.ending = true;
    clearTimeout(front.timer);
    if (front.innerPort !== undefined) byPort.delete(front.innerPort);
    closeQuietly(front.inner);
    if (reply && !stopped()) track(answerAndClose(front.client, reply, front.upstream));
    else closeQuietly(front.client);
  }
  const idle = (front: Front) => {
    front.awaitingHead = false;
    arm(front, end);
  };
  /** Shutdown: ends `front` if it waits for a head, tells the server no more come if idle. */
  const drain = (front: Front) => {
    if (front.awaitingHead) end(front);
    else if (front.inFlight === 0) front.inner?.closeWrite().catch(() => end(front));
  };
  return {
    end,
    idle,
    onClientBytes(front: Front) {
      if (front.inFlight > 0 || front.awaitingHead || front.ending) return;
      front.awaitingHead = true;
      arm(front, timeout);
    },
    started(front: Front) {
      front.inFlight++;
      front.awaitingHead = false;
      clearTimeout(front.timer);
    },
    done(front: Front) {
      if (--front.inFlight > 0 || front.ending) return;
      if (stopped()) drain(front);
      else idle(front);
    },
    drain,
  };
}

/** Connections open per client address, and the refusal of one too many. */
function createAddressCounts(
  options: ConnectionGuardOptions,
  track: (work: Promise<void>) => void,
) {
  const max = options.maxConnectionsPerAddress;
  const open = new Map<string, number>();
  // Addresses refused since they were last under the cap: one log line per episode, not per
  // connection.
  const capped = new Set<string>();
  return {
    /** Counts `client` in, or answers it 429 and closes it: false. */
    admit(client: Deno.TcpConn): boolean {
      const { hostname } = client.remoteAddr;
      const count = open.get(hostname) ?? 0;
      if (max > 0 && count >= max) {
        if (!capped.has(hostname)) {
          capped.add(hostname);
          options.logger.warn(
            `refusing connections from ${hostname}: it holds ${max} open ` +
              "(429, SLUICE_MAX_CONNECTIONS_PER_ADDRESS)",
          );
        }
        track(answerAndClose(client, tooMany(max), discardInput(client)));
        return false;
      }
      open.set(hostname, count + 1);
      return true;
    },
    release(hostname: string) {
      const left = (open.get(hostname) ?? 1) - 1;
      if (left > 0) open.set(hostname, left);
      else open.delete(hostname);
      if (left < max) capped.delete(hostname);
    },
    size: () => [...open.values()].reduce((a, b) => a + b, 0),
  };
}

/** What {@link connect} needs of the table. */
interface FrontHooks {
  byPort: Map<number, Front>;
  idle(front: Front): void;
  end(front: Front, reply?: Uint8Array): void;
  onClientBytes(front: Front): void;
}

/** Dials the inner server for `front` and copies both ways until either side ends. */
async function connect(front: Front, innerPort: number, hooks: FrontHooks): Promise<void> {
  try {
    front.inner = await Deno.connect({ hostname: "127.0.0.1", port: innerPort });
  } catch {
    // The inner server is gone (shutting down): nothing can answer.
    closeQuietly(front.client);
    return;
  }
  if (front.ending) return closeQuietly(front.inner);
  front.innerPort = front.inner.localAddr.port;
  hooks.byPort.set(front.innerPort, front);
  hooks.idle(front);
  const inner = front.inner;
  front.upstream = copy(front.client, inner, CLIENT_READ_BYTES, {
    onBytes: () => hooks.onClientBytes(front),
    drop: () => front.ending,
  }).then((ended) => {
    // The client finished sending (half-close): the server may still answer.
    if (ended === "eof" && !front.ending) inner.closeWrite().catch(() => hooks.end(front));
    else hooks.end(front);
  });
  // The server closed (or failed): the connection is over.
  const downstream = copy(inner, front.client, SERVER_READ_BYTES).then(() => hooks.end(front));
  await Promise.all([front.upstream, downstream]);
}

/** Copies `from` to `to` until `from` ends ("eof") or either fails ("error"). */
async function copy(
  from: Deno.Conn,
  to: Deno.Conn,
  size: number,
  hooks: { onBytes?: () => void; drop?: () => boolean } = {},
): Promise<"eof" | "error"> {
  const buffer = new Uint8Array(size);
  try {
    for (let n = await from.read(buffer); n !== null; n = await from.read(buffer)) {
      hooks.onBytes?.();
      if (hooks.drop?.()) continue;
      await writeAll(to, buffer.subarray(0, n));
    }
    return "eof";
  } catch {
    return "error";
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let written = 0; written < bytes.length;) {
    written += await conn.write(bytes.subarray(written));
  }
}

/**
 * Writes `reply`, ends the sending side, and closes once the client has closed its side (`read`
 * settles) or {@link LINGER_MS} has passed: closing while the client's bytes are unread would
 * reset the connection, and the client might lose the answer.
 */
async function answerAndClose(
  client: Deno.TcpConn,
  reply: Uint8Array,
  read: Promise<unknown> | undefined,
): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const linger = new Promise((resolve) => (timer = setTimeout(resolve, LINGER_MS)));
  try {
    await Promise.race([writeAll(client, reply).then(() => client.closeWrite()), linger]);
    await Promise.race([read ?? linger, linger]);
  } catch {
    // The client went away first.
  } finally {
    clearTimeout(timer);
    closeQuietly(client);
  }
}

/** Reads and drops what `conn` sends until it ends or is closed. */
async function discardInput(conn: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(1024);
  try {
    while ((await conn.read(buffer)) !== null) { /* dropped */ }
  } catch {
    // Closed.
  }
}

/**
 * The inner server's handler: finds the front connection a request came through, marks the
 * request's start and end on it, and passes the client's real address on.
 */
function guardHandler(
  handler: Deno.ServeHandler<Deno.NetAddr>,
  byPort: Map<number, Front>,
  started: (front: Front) => void,
  done: (front: Front) => void,
): Deno.ServeHandler<Deno.NetAddr> {
  return (request, info) => {
    const front = byPort.get(info.remoteAddr.port);
    if (!front) return notThroughFront();
    started(front);
    const completed = info.completed;
    completed.then(() => done(front), () => done(front));
    return handler(request, { remoteAddr: front.address, completed });
  };
}

function notThroughFront(): Response {
  return errorResponse(403, "permission_error", "connect to sluice's public address", {
    headers: { connection: "close" },
  });
}

function headTimeout(ms: number): Uint8Array {
  return rawErrorResponse(
    408,
    "Request Timeout",
    "timeout_error",
    `the request head did not arrive within ${ms} ms (SLUICE_HEADER_TIMEOUT_MS)`,
  );
}

function tooMany(max: number): Uint8Array {
  return rawErrorResponse(
    429,
    "Too Many Requests",
    "rate_limit_error",
    `too many connections from this address: at most ${max} at once ` +
      "(SLUICE_MAX_CONNECTIONS_PER_ADDRESS)",
  );
}

function closeQuietly(conn: { close(): void } | undefined): void {
  try {
    conn?.close();
  } catch {
    // Already closed.
  }
}
