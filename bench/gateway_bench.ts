/**
 * Gateway overhead on loopback: the same load client, the same paced fake upstream, five paths
 * side by side in one run, at 1, 100 and 1,000 concurrent streams.
 *
 * - `direct`: client → fake upstream (what the network and the client cost by themselves);
 * - `passthrough`: through a proxy that copies bytes and parses nothing (the floor);
 * - `js-copy`: the same, but every chunk passes through JavaScript (a yardstick: the floor of a
 *   gateway that must look at the bytes, in Deno);
 * - `sluice`: through sluice (createApp, live upstream pointed at the fake);
 * - `sdk-hono`: through a Hono route re-sending the SDK's MessageStream events with streamSSE.
 *
 * The upstream and each gateway run in their own process (bench/fake_upstream.ts,
 * bench/gateways.ts) so a gateway's CPU time and memory are its own. The upstream writes its
 * send time into every text delta; the client converts it to its own clock (offset measured
 * with `GET /clock`) and so measures, for every stream, the latency the path added to its first
 * and last text deltas.
 *
 * Run alone: deno run --allow-net=127.0.0.1 --allow-run --allow-read --allow-env
 *   bench/gateway_bench.ts [--levels 1,100,1000] [--deltas 100] [--json]
 * (`deno task bench` runs it after the accumulator benchmarks.)
 */
import { parseArgs } from "node:util";
import { markdownTable, percentile } from "./report.ts";
import type { ProxyUsage } from "./gateways.ts";
import { type Child, processUsage, spawn, spawnMain } from "./processes.ts";

/** The paths, in the order they run at each level. */
/**
 * The paths, in the order they run at each level. `js-copy` is a yardstick, not a contender: a
 * pass-through whose chunks go through JavaScript (see gateways.ts), the floor for any
 * gateway that looks at the bytes in Deno.
 */
export const PATHS = ["direct", "passthrough", "js-copy", "sluice", "sdk-hono"] as const;
/**
 * Also available (`--paths`): sluice as `deno task start` runs it, main.ts with one isolate
 * (`sluice-main`) or one per core (`sluice-workers`), each with a KV file of its own. Their CPU
 * and RSS come from /proc (all threads); their heap is not known.
 */
export const MAIN_PATHS = ["sluice-main", "sluice-workers"] as const;
export type PathName = typeof PATHS[number] | typeof MAIN_PATHS[number];

/** Options for {@link runGatewayBench}. */
export interface GatewayBenchOptions {
  /** Levels: concurrent streams, each at `intervalMs` unless given (`{ streams, intervalMs }`). */
  levels?: Level[];
  /** Text deltas per stream. */
  deltas?: number;
  /** Upstream time to first text delta, ms. */
  ttftMs?: number;
  /** Upstream time between deltas, ms. */
  intervalMs?: number;
  /** Streams run one after another at level 1 (for percentiles). */
  sequentialRuns?: number;
  /** How many times every level runs (paths interleaved in each round); samples are pooled. */
  rounds?: number;
  /** Give up on a level (per path) after this long, ms. */
  levelTimeoutMs?: number;
  /** Which paths to run (all by default). */
  paths?: PathName[];
  /** Extra `deno run` flags for the gateway processes (e.g. `--v8-flags=--prof` to profile). */
  proxyFlags?: string[];
  /** Progress lines go here. */
  log?: (line: string) => void;
}

/** One load level: how many streams at once, and their pace. */
export interface Level {
  streams: number;
  intervalMs?: number;
}

/** Parses `1000` or `1000@100` (1,000 streams, a delta every 100 ms). */
export function parseLevel(text: string): Level {
  const [streams, interval] = text.split("@").map(Number);
  return interval === undefined ? { streams } : { streams, intervalMs: interval };
}

/** One path at one level. */
export interface LevelResult {
  path: PathName;
  streams: number;
  /** Upstream time between deltas at this level, ms. */
  intervalMs: number;
  ok: number;
  failed: number;
  /** First text delta: client receipt minus upstream write, ms. */
  addedTtft: { p50: number; p99: number };
  /** Last text delta: client receipt minus upstream write, ms. */
  addedLast: { p50: number; p99: number };
  /** The worst delta of each stream, ms (p50 over streams). */
  addedMaxP50: number;
  /** What the client saw: request sent to first text delta, ms (includes the upstream's TTFT). */
  clientTtftP50: number;
  /**
   * How late the load client's own 5 ms timer fired while this path ran (p99 over the rounds'
   * ticks), ms: a busy client delays its readings, whatever the path, so a slow round with a
   * lagging client says more about the client than about the gateway.
   */
  clientLagP99: number;
  /** The gateway process's CPU time per 1,000 SSE events carried; null for `direct`. */
  cpuMsPer1kEvents: number | null;
  /**
   * Growth of the gateway's JS heap (used) from before the level to the middle of it (every
   * stream open), per stream, KiB; null for `direct`. Includes garbage not yet collected; noise
   * dominates at 1 stream.
   */
  heapKibPerStream: number | null;
  /** The same for the process's RSS (largest over rounds); the warm-up has grown it already. */
  rssKibPerStream: number | null;
  wallMs: number;
}

interface StreamSample {
  ok: boolean;
  error?: string;
  addedFirst?: number;
  addedLast?: number;
  /** The largest added latency of any delta of the stream. */
  addedMax?: number;
  clientTtft?: number;
}

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** The upstream's clock minus ours, from the exchange with the shortest round trip. */
async function clockOffset(upstreamUrl: string): Promise<number> {
  let best = { rtt: Infinity, offset: 0 };
  for (let i = 0; i < 40; i++) {
    const sent = now();
    const theirs = Number(await (await fetch(`${upstreamUrl}/clock`)).text());
    const received = now();
    if (received - sent < best.rtt) {
      best = { rtt: received - sent, offset: theirs - (sent + received) / 2 };
    }
  }
  return best.offset;
}

/**
 * One streamed request. Stamps (`|<ms>|` in the text) are read straight from the bytes, so the
 * client spends as little as possible per event and measures every path the same way.
 */
async function runStream(
  url: string,
  deltas: number,
  offset: number,
  signal: AbortSignal,
  intervalMs?: number,
): Promise<StreamSample> {
  const sentAt = now();
  try {
    const response = await fetch(`${url}/v1/messages`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-api-key": "bench-key",
        "anthropic-version": "2023-06-01",
      },
      body: JSON.stringify({
        // Not a real model id: the SDK warns on the console for deprecated ones, which would
        // charge the SDK route for a log line per request.
        model: "claude-bench",
        max_tokens: 1024,
        stream: true,
        metadata: {
          user_id: `deltas=${deltas}` + (intervalMs === undefined ? "" : `;interval=${intervalMs}`),
        },
        messages: [{ role: "user", content: "Benchmark me." }],
      }),
      signal,
    });
    if (!response.ok || !response.body) {
      await response.body?.cancel();
      return { ok: false, error: `HTTP ${response.status}` };
    }
    const reader = response.body.getReader();
    let inStamp = false;
    let partial = "";
    let seen = 0;
    let addedFirst: number | undefined;
    let addedLast: number | undefined;
    let addedMax = -Infinity;
    let firstAt = 0;
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      const receivedAt = now();
      let from = 0;
      while (true) {
        const bar = value.indexOf(124, from); // "|"
        if (bar === -1) {
          if (inStamp) partial += String.fromCharCode(...value.subarray(from));
          break;
        }
        if (inStamp) {
          const stamp = Number(partial + String.fromCharCode(...value.subarray(from, bar)));
          const added = receivedAt - (stamp - offset);
          if (seen === 0) {
            addedFirst = added;
            firstAt = receivedAt;
          }
          addedLast = added;
          if (added > addedMax) addedMax = added;
          seen++;
          partial = "";
        }
        inStamp = !inStamp;
        from = bar + 1;
      }
    }
    if (seen !== deltas) return { ok: false, error: `${seen} of ${deltas} deltas arrived` };
    return { ok: true, addedFirst, addedLast, addedMax, clientTtft: firstAt - sentAt };
  } catch (error) {
    return { ok: false, error: String(error) };
  }
}

async function usage(url: string): Promise<ProxyUsage> {
  return await (await fetch(`${url}/__bench/usage`)).json();
}

/**
 * Runs `streams` concurrent streams (one after another `sequentialRuns` times at level 1), and
 * calls `midway` once while every stream of the level is open.
 */
async function runLevel(
  url: string,
  level: Level,
  options: Required<GatewayBenchOptions>,
  offset: number,
  midway: () => Promise<void>,
): Promise<StreamSample[]> {
  const signal = AbortSignal.timeout(options.levelTimeoutMs);
  const { streams } = level;
  const intervalMs = level.intervalMs ?? options.intervalMs;
  const streamMs = options.ttftMs + options.deltas * intervalMs;
  if (streams === 1) {
    const samples = [];
    for (let i = 0; i < options.sequentialRuns; i++) {
      const probe = i === 0 ? sleep(streamMs / 2).then(midway) : undefined;
      samples.push(await runStream(url, options.deltas, offset, signal, intervalMs));
      await probe;
    }
    return samples;
  }
  // Starts are spread over a fifth of a stream's length, so every stream is open at once while
  // the upstream's writes are not all in lockstep.
  const rampMs = streamMs / 5;
  const probe = sleep(rampMs + (streamMs - rampMs) / 2).then(midway);
  const samples = await Promise.all(
    Array.from({ length: streams }, async (_, i) => {
      await sleep((i * rampMs) / streams);
      return await runStream(url, options.deltas, offset, signal, intervalMs);
    }),
  );
  await probe;
  return samples;
}

/** Measures how late a 5 ms timer fires in this process until `stop` (the lateness of each tick). */
function watchLag(): { stop(): number[] } {
  const lags: number[] = [];
  let expected = performance.now() + 5;
  const timer = setInterval(() => {
    const now = performance.now();
    lags.push(Math.max(0, now - expected));
    expected = now + 5;
  }, 5);
  return {
    stop() {
      clearInterval(timer);
      return lags;
    },
  };
}

/** Runs the whole comparison and returns one result per path and level. */
export async function runGatewayBench(options: GatewayBenchOptions = {}): Promise<LevelResult[]> {
  const opts: Required<GatewayBenchOptions> = {
    levels: [{ streams: 1 }, { streams: 100 }, { streams: 1000 }],
    deltas: 100,
    ttftMs: 100,
    intervalMs: 10,
    sequentialRuns: 10,
    rounds: 2,
    levelTimeoutMs: 120_000,
    paths: [...PATHS],
    proxyFlags: [],
    log: (line) => console.error(line),
    ...options,
  };
  const children: Child[] = [];
  const kvDir = await Deno.makeTempDir({ prefix: "sluice-gateway-bench-" });
  try {
    const upstream = await spawn("./fake_upstream.ts", [
      "--ttft",
      String(opts.ttftMs),
      "--interval",
      String(opts.intervalMs),
      "--deltas",
      String(opts.deltas),
    ], ["--allow-net=127.0.0.1"]);
    children.push(upstream);
    const urls: Record<PathName, string> = { direct: upstream.url } as Record<PathName, string>;
    const usageOf = {} as Record<PathName, () => Promise<ProxyUsage>>;
    const proxies = opts.paths.filter((path) => path !== "direct");
    for (const path of proxies) {
      if ((MAIN_PATHS as readonly string[]).includes(path)) {
        const child = await spawnMain({
          ANTHROPIC_API_KEY: "bench-key",
          ANTHROPIC_BASE_URL: upstream.url,
          SLUICE_UPSTREAM: "live",
          SLUICE_KV_PATH: `${kvDir}/${path}.sqlite3`,
          SLUICE_WORKERS: path === "sluice-workers" ? "auto" : "1",
        });
        children.push(child);
        urls[path] = child.url;
        usageOf[path] = () => processUsage(child.process.pid);
        continue;
      }
      const child = await spawn("./gateways.ts", [path, upstream.url], [
        "--allow-net=127.0.0.1",
        "--allow-env",
        ...opts.proxyFlags,
      ]);
      children.push(child);
      urls[path] = child.url;
      usageOf[path] = () => usage(child.url);
    }
    const offset = await clockOffset(upstream.url);
    opts.log(`upstream clock offset ${offset.toFixed(3)} ms; warming up every path`);
    // Warm-up: JIT, connection pools, and a heap grown to the largest level's size once (short
    // streams, starts spread over 200 ms), so the first measured round does not pay for that.
    const most = Math.max(...opts.levels.map((level) => level.streams));
    for (const path of opts.paths) {
      for (const count of [50, 50, most]) {
        await Promise.all(
          Array.from({ length: count }, async (_, i) => {
            await sleep((i * 200) / count);
            return runStream(urls[path], 20, offset, AbortSignal.timeout(opts.levelTimeoutMs));
          }),
        );
      }
    }

    // Every level runs `rounds` times, paths interleaved within each round, and the samples are
    // pooled: this machine's background noise comes and goes, and should hit all paths alike.
    interface Pool {
      samples: StreamSample[];
      lags: number[];
      cpuMicros: number;
      events: number;
      heapKib: number[];
      rssKib: number[];
      wallMs: number;
    }
    const pools = new Map<string, Pool>();
    const eventsPerStream = opts.deltas + 6; // start, block start, ping, deltas, stop, delta, stop
    for (let round = 1; round <= opts.rounds; round++) {
      for (const level of opts.levels) {
        const streams = level.streams;
        const intervalMs = level.intervalMs ?? opts.intervalMs;
        for (const path of opts.paths) {
          await sleep(300); // let the previous run's sockets close
          const proxy = path === "direct" ? undefined : usageOf[path];
          const before = proxy ? await proxy() : undefined;
          let middle: ProxyUsage | undefined;
          const started = performance.now();
          const lag = watchLag();
          const samples = await runLevel(urls[path], level, opts, offset, async () => {
            if (proxy) middle = await proxy();
          });
          const lags = lag.stop();
          const wallMs = performance.now() - started;
          const after = proxy ? await proxy() : undefined;
          const key = `${streams}@${intervalMs}/${path}`;
          const pool = pools.get(key) ??
            { samples: [], lags: [], cpuMicros: 0, events: 0, heapKib: [], rssKib: [], wallMs: 0 };
          pools.set(key, pool);
          pool.samples.push(...samples);
          pool.lags.push(...lags);
          pool.wallMs += wallMs;
          if (before && after) {
            pool.cpuMicros += after.cpuMicros - before.cpuMicros;
            pool.events += samples.length * eventsPerStream;
          }
          if (before && middle) {
            // A collection between the two readings can make it negative: that reads as 0.
            const heap = Math.max(0, middle.heapUsed - before.heapUsed) / 1024 / streams;
            if (Number.isFinite(heap)) pool.heapKib.push(heap);
            pool.rssKib.push((middle.rss - before.rss) / 1024 / streams);
          }
          const ok = samples.filter((s) => s.ok);
          const errors = [...new Set(samples.filter((s) => !s.ok).map((s) => s.error))];
          opts.log(
            `round ${round}: ${String(streams).padStart(5)} streams @${intervalMs} ms  ${
              path.padEnd(11)
            } ok ${ok.length}/${samples.length}` +
              `  TTFT +${fmt(percentile(ok.map((s) => s.addedFirst!), 50))}/${
                fmt(percentile(ok.map((s) => s.addedFirst!), 99))
              } ms` +
              `  last +${fmt(percentile(ok.map((s) => s.addedLast!), 50))} ms` +
              `  client lag p99 ${fmt(percentile(lags, 99))} ms` +
              (errors.length ? `  errors: ${errors.slice(0, 3).join("; ")}` : ""),
          );
        }
      }
    }

    const results: LevelResult[] = [];
    for (const level of opts.levels) {
      const intervalMs = level.intervalMs ?? opts.intervalMs;
      for (const path of opts.paths) {
        const pool = pools.get(`${level.streams}@${intervalMs}/${path}`)!;
        const ok = pool.samples.filter((s) => s.ok);
        results.push({
          path,
          streams: level.streams,
          intervalMs,
          ok: ok.length,
          failed: pool.samples.length - ok.length,
          addedTtft: {
            p50: percentile(ok.map((s) => s.addedFirst!), 50),
            p99: percentile(ok.map((s) => s.addedFirst!), 99),
          },
          addedLast: {
            p50: percentile(ok.map((s) => s.addedLast!), 50),
            p99: percentile(ok.map((s) => s.addedLast!), 99),
          },
          addedMaxP50: percentile(ok.map((s) => s.addedMax!), 50),
          clientTtftP50: percentile(ok.map((s) => s.clientTtft!), 50),
          clientLagP99: percentile(pool.lags, 99),
          cpuMsPer1kEvents: pool.events ? (pool.cpuMicros / 1000) / (pool.events / 1000) : null,
          heapKibPerStream: pool.heapKib.length ? percentile(pool.heapKib, 50) : null,
          // RSS seldom shrinks, so later rounds reuse what the first grew: take the largest.
          rssKibPerStream: pool.rssKib.length ? Math.max(...pool.rssKib) : null,
          wallMs: pool.wallMs,
        });
      }
    }
    return results;
  } finally {
    for (const child of children) {
      try {
        child.process.kill("SIGTERM");
      } catch {
        // already gone
      }
      await child.process.status;
    }
    await Deno.remove(kvDir, { recursive: true }).catch(() => {});
  }
}

function fmt(value: number | null, digits = 2): string {
  if (value === null || Number.isNaN(value)) return "—";
  return value >= 100 ? value.toFixed(0) : value.toFixed(digits);
}

function ratio(value: number, floor: number): string {
  if (!Number.isFinite(value) || !Number.isFinite(floor) || floor <= 0) return "—";
  return `${(value / floor).toFixed(2)}x`;
}

/** The side-by-side table, with ratios to the pass-through floor at the same level. */
export function gatewayTable(results: LevelResult[]): string {
  const rows = results.map((r) => {
    const floor = results.find((f) =>
      f.streams === r.streams && f.intervalMs === r.intervalMs && f.path === "passthrough"
    );
    return [
      `${r.streams} @${r.intervalMs} ms`,
      r.path,
      `${r.ok}/${r.ok + r.failed}`,
      fmt(r.addedTtft.p50),
      fmt(r.addedTtft.p99),
      floor ? ratio(r.addedTtft.p50, floor.addedTtft.p50) : "—",
      floor ? ratio(r.addedTtft.p99, floor.addedTtft.p99) : "—",
      fmt(r.addedLast.p50),
      fmt(r.addedLast.p99),
      fmt(r.clientTtftP50, 1),
      fmt(r.clientLagP99),
      fmt(r.cpuMsPer1kEvents),
      r.heapKibPerStream === null
        ? "—"
        : `${fmt(r.heapKibPerStream, 1)} / ${fmt(r.rssKibPerStream, 1)}`,
    ];
  });
  return markdownTable([
    "streams @ delta interval",
    "path",
    "ok",
    "added TTFT p50 ms",
    "p99 ms",
    "p50 ÷ floor",
    "p99 ÷ floor",
    "last delta p50 ms",
    "p99 ms",
    "client TTFT p50 ms",
    "client lag p99 ms",
    "CPU ms / 1k events",
    "heap / RSS KiB per stream",
  ], rows);
}

/** The targets of issue 6, checked against one run. */
export function gatewayVerdicts(results: LevelResult[]): string[] {
  const lines: string[] = [];
  const levels = [...new Set(results.map((r) => `${r.streams}@${r.intervalMs}`))];
  for (const level of levels) {
    const [streams, interval] = level.split("@").map(Number);
    if (streams < 100) continue;
    const get = (path: PathName) =>
      results.find((r) => r.path === path && r.streams === streams && r.intervalMs === interval);
    const sluice = get("sluice");
    const floor = get("passthrough");
    const sdk = get("sdk-hono");
    const jsCopy = get("js-copy");
    if (!sluice || !floor || !sdk) continue;
    for (const p of ["p50", "p99"] as const) {
      const vsFloor = sluice.addedTtft[p] / floor.addedTtft[p];
      const vsSdk = sdk.addedTtft[p] / sluice.addedTtft[p];
      lines.push(
        `${streams} streams @${interval} ms, added TTFT ${p}: sluice ${
          fmt(sluice.addedTtft[p])
        } ms = ` +
          `${vsFloor.toFixed(2)}x the floor (target <= 1.5x: ${
            vsFloor <= 1.5 ? "met" : "NOT met"
          }); ` +
          `the SDK+streamSSE route is ${vsSdk.toFixed(1)}x sluice (target >= 10x: ${
            vsSdk >= 10 ? "met" : "NOT met"
          })` +
          (jsCopy
            ? `; vs the JS-copy yardstick ${
              (sluice.addedTtft[p] / jsCopy.addedTtft[p]).toFixed(2)
            }x`
            : "") +
          // What 10x would take: even the floor, which never touches a byte in JavaScript, is
          // only this much lower than the SDK route.
          `; the SDK route is ${(sdk.addedTtft[p] / floor.addedTtft[p]).toFixed(1)}x the floor`,
      );
    }
  }
  return lines;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      levels: { type: "string", default: "1,100,1000" },
      deltas: { type: "string", default: "100" },
      runs: { type: "string", default: "10" },
      paths: { type: "string", default: PATHS.join(",") },
      rounds: { type: "string", default: "2" },
      json: { type: "boolean", default: false },
    },
  });
  const results = await runGatewayBench({
    levels: values.levels.split(",").map(parseLevel),
    deltas: Number(values.deltas),
    sequentialRuns: Number(values.runs),
    rounds: Number(values.rounds),
    paths: values.paths.split(",") as PathName[],
    proxyFlags: Deno.env.get("BENCH_PROXY_FLAGS")?.split(" ").filter(Boolean) ?? [],
  });
  if (values.json) console.log(JSON.stringify(results));
  else console.log(gatewayTable(results) + "\n\n" + gatewayVerdicts(results).join("\n"));
}
