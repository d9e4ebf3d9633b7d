/**
 * The request path: what a whole request costs through each path, as its client sees it, with
 * an upstream that answers at once (its first text delta is written with its headers).
 *
 * Paths, each in its own process (bench/gateways.ts), against one fake upstream
 * (bench/fake_upstream.ts): `direct`, `floor` (Deno `fetch` + `new Response(r.body)`), `js-copy`
 * (every chunk through a JavaScript stream), `sluice` (as main.ts wires it, no gateway keys,
 * `Deno.serve` alone), `sluice-guarded` (the same behind the connection guard's TCP front),
 * `sluice-prod` (gateway keys, rate and concurrency limits, stats), `sluice-history` (the same on
 * a copy of a KV file holding a month of stats and conversations, bench/kv_history.ts) and
 * `sdk-hono` (the SDK's MessageStream re-sent with Hono's streamSSE). Every sluice path writes
 * its stats to a KV file of its own, as main.ts does.
 *
 * For each load (sequential, 10 and 100 concurrent clients, each client sending one request
 * after another) and each kind (streamed: send → first text delta; non-streamed: send → whole
 * body), the paths run interleaved in rounds whose samples are pooled. "Added" is a path's
 * percentile less direct's from the same run; "÷ floor" divides it by the floor's added figure.
 * CPU per request is the gateway process's user + system time over the requests it served; RSS
 * is its largest resident size at the end of a batch.
 *
 * Run: deno task bench:request [--rounds 3] [--sequential 60] [--per-client 20]
 *   [--loads 1,10,100] [--paths floor,sluice] [--history .sluice/bench-history.sqlite3]
 *   [--before DIR --paths …,sluice@before]  (DIR: another checkout, e.g. `git archive` of a commit)
 */
import { parseArgs } from "node:util";
import type { ProxyUsage } from "./gateways.ts";
import { writeHistory } from "./kv_history.ts";
import { type Child, spawn } from "./processes.ts";
import { peersInstalled, startPortkey } from "./peers.ts";
import { markdownTable, percentile } from "./report.ts";

/** The paths, in the order they run. */
export const REQUEST_PATHS = [
  "direct",
  "floor",
  "js-copy",
  "sluice",
  "sluice-guarded",
  "sluice-prod",
  "sluice-history",
  "sdk-hono",
] as const;
/**
 * A path of the request bench; a sluice path with `@before` runs the gateway from another
 * checkout (`--before DIR`, e.g. the commit before a change), in the same run; `portkey` is
 * Portkey's gateway on Bun (bench/peers.ts), run by default when it is installed.
 */
export type RequestPath = typeof REQUEST_PATHS[number] | `${SluicePath}@before` | "portkey";
type SluicePath = "sluice" | "sluice-prod" | "sluice-history";
type Kind = "stream" | "json";

/** Which gateway of bench/gateways.ts runs a path. */
const GATEWAY: Record<Exclude<typeof REQUEST_PATHS[number], "direct">, string> = {
  floor: "passthrough",
  "js-copy": "js-copy",
  sluice: "sluice",
  "sluice-guarded": "sluice-guarded",
  "sluice-prod": "sluice-prod",
  "sluice-history": "sluice-prod",
  "sdk-hono": "sdk-hono",
};

/** Options for {@link runRequestBench}. */
export interface RequestBenchOptions {
  /** Concurrent clients of each load; 1 is sequential. */
  loads?: number[];
  rounds?: number;
  /** Requests per round at load 1. */
  sequential?: number;
  /** Requests per client per round at the other loads. */
  perClient?: number;
  paths?: RequestPath[];
  /** The month-of-history KV file (written first when missing). */
  historyPath?: string;
  /** Extra `deno run` flags for the gateway processes (e.g. `--cpu-prof`). */
  proxyFlags?: string[];
  /** Environment of the sluice gateways (e.g. BENCH_WORKERS). */
  sluiceEnv?: Record<string, string>;
  /** Another checkout whose `lib/` the `@before` paths run (bench/gateways.ts is copied in). */
  beforeDir?: string;
  log?: (line: string) => void;
}

/** One path, load and kind. */
export interface RequestResult {
  path: RequestPath;
  load: number;
  kind: Kind;
  ok: number;
  failed: number;
  p50: number;
  p99: number;
  /** CPU time of the gateway per request, µs; null for direct. */
  cpuMicrosPerRequest: number | null;
  /** Largest RSS of the gateway at the end of a batch, MiB; null for direct. */
  rssMib: number | null;
}

const now = () => performance.now();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const TEXT_DELTA = new TextEncoder().encode('"text_delta"');

/** Whether `chunk` holds the bytes of `needle` (the client's only parsing: a byte search). */
function contains(chunk: Uint8Array, needle: Uint8Array): boolean {
  const first = needle[0];
  for (let i = chunk.indexOf(first); i !== -1 && i <= chunk.length - needle.length;) {
    let j = 1;
    while (j < needle.length && chunk[i + j] === needle[j]) j++;
    if (j === needle.length) return true;
    i = chunk.indexOf(first, i + 1);
  }
  return false;
}

function requestBody(kind: Kind): string {
  return JSON.stringify({
    model: "claude-bench",
    max_tokens: 1024,
    stream: kind === "stream",
    metadata: { user_id: "deltas=5;interval=0;ttft=0" },
    messages: [{ role: "user", content: "Benchmark me." }],
  });
}

/** A path as the clients reach it. */
interface Target {
  url: string;
  /** Headers the path needs besides the API's (a peer's routing headers). */
  headers?: Record<string, string>;
  /** The gateway process's CPU time and RSS; none for direct. */
  usage?: () => Promise<ProxyUsage>;
}

/** One request; its latency in ms (to the first text delta, or to the whole body), or an error. */
async function one(target: Target, kind: Kind, body: string): Promise<number | string> {
  const sent = now();
  try {
    const response = await fetch(`${target.url}/v1/messages`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-api-key": "bench-key",
        "anthropic-version": "2023-06-01",
        ...target.headers,
      },
      body,
    });
    if (response.status !== 200 || !response.body) {
      await response.body?.cancel();
      return `HTTP ${response.status}`;
    }
    if (kind === "json") {
      const bytes = await response.bytes();
      const at = now();
      return bytes.length > 0 ? at - sent : "empty body";
    }
    let first: number | undefined;
    for await (const chunk of response.body) {
      if (first === undefined && contains(chunk, TEXT_DELTA)) first = now() - sent;
    }
    return first ?? "no text delta";
  } catch (error) {
    return String(error);
  }
}

/** What a bench/gateways.ts process says of itself (`GET /__bench/usage`). */
function gatewayUsage(url: string): () => Promise<ProxyUsage> {
  return async () => await (await fetch(`${url}/__bench/usage`)).json();
}

/** `clients` clients, each sending `each` requests one after another. */
async function batch(target: Target, kind: Kind, clients: number, each: number) {
  const body = requestBody(kind);
  const results = await Promise.all(Array.from({ length: clients }, async () => {
    const mine: (number | string)[] = [];
    for (let i = 0; i < each; i++) mine.push(await one(target, kind, body));
    return mine;
  }));
  return results.flat();
}

/** Starts the paths' processes: the upstream, then one gateway per path. */
async function startPaths(opts: Required<RequestBenchOptions>, dir: string) {
  const children: Child[] = [];
  const upstream = await spawn("./fake_upstream.ts", ["--ttft", "0", "--interval", "0"], [
    "--allow-net=127.0.0.1",
  ]);
  children.push(upstream);
  const targets = { direct: { url: upstream.url } } as Record<RequestPath, Target>;
  for (const path of opts.paths) {
    if (path === "direct") continue;
    if (path === "portkey") {
      const peer = await startPortkey(upstream.url);
      children.push(peer);
      targets[path] = peer;
      continue;
    }
    const env: Record<string, string> = { ...opts.sluiceEnv };
    if (path.startsWith("sluice")) env.BENCH_KV_PATH = `${dir}/${path}.sqlite3`;
    if (path.startsWith("sluice-history")) {
      await Deno.stat(opts.historyPath).catch(async () => {
        opts.log(`writing ${opts.historyPath} (a month of stats and conversations) …`);
        await writeHistory({ path: opts.historyPath });
      });
      await Deno.copyFile(opts.historyPath, env.BENCH_KV_PATH);
    }
    const [name, before] = path.split("@") as [keyof typeof GATEWAY, string | undefined];
    let script = "./gateways.ts";
    if (before) {
      if (!opts.beforeDir) throw new Error(`${path} needs --before DIR`);
      await Deno.mkdir(`${opts.beforeDir}/bench`, { recursive: true });
      for (const file of ["gateways.ts", "sluice_app.ts", "js_copy.ts"]) {
        await Deno.copyFile(
          new URL(`./${file}`, import.meta.url),
          `${opts.beforeDir}/bench/${file}`,
        );
      }
      script = new URL(`file://${Deno.realPathSync(opts.beforeDir)}/bench/gateways.ts`).href;
    }
    const child = await spawn(script, [GATEWAY[name], upstream.url], [
      "--allow-net=127.0.0.1",
      "--allow-env",
      "--allow-read",
      "--allow-write",
      "--allow-run",
      ...opts.proxyFlags,
    ], env);
    children.push(child);
    targets[path] = { url: child.url, usage: gatewayUsage(child.url) };
  }
  return { children, targets };
}

/** Runs the request bench and returns one result per path, load and kind. */
export async function runRequestBench(
  options: RequestBenchOptions = {},
): Promise<RequestResult[]> {
  const peers = await peersInstalled();
  const opts: Required<RequestBenchOptions> = {
    loads: [1, 10, 100],
    rounds: 3,
    sequential: 60,
    perClient: 20,
    paths: [...REQUEST_PATHS, ...(peers ? ["portkey" as const] : [])],
    historyPath: ".sluice/bench-history.sqlite3",
    beforeDir: "",
    proxyFlags: [],
    sluiceEnv: {},
    log: (line) => console.error(line),
    ...options,
  };
  const dir = await Deno.makeTempDir({ prefix: "sluice-request-bench-" });
  if (!peers) {
    opts.log("portkey: not installed, not measured (deno task bench:peers installs it)");
  }
  const { children, targets } = await startPaths(opts, dir);
  try {
    opts.log("warming up every path");
    for (const path of opts.paths) {
      for (const kind of ["stream", "json"] as const) await batch(targets[path], kind, 20, 25);
    }
    interface Pool {
      samples: number[];
      errors: string[];
      cpuMicros: number;
      requests: number;
      rss: number;
    }
    const pools = new Map<string, Pool>();
    for (let round = 1; round <= opts.rounds; round++) {
      for (const load of opts.loads) {
        for (const kind of ["stream", "json"] as const) {
          for (const path of opts.paths) {
            await sleep(100);
            const usage = targets[path].usage;
            const before = usage ? await usage() : undefined;
            const each = load === 1 ? opts.sequential : opts.perClient;
            const results = await batch(targets[path], kind, load, each);
            const after = usage ? await usage() : undefined;
            const key = `${load}/${kind}/${path}`;
            const pool = pools.get(key) ??
              { samples: [], errors: [], cpuMicros: 0, requests: 0, rss: 0 };
            pools.set(key, pool);
            for (const r of results) {
              if (typeof r === "number") pool.samples.push(r);
              else pool.errors.push(r);
            }
            if (before && after) {
              pool.cpuMicros += after.cpuMicros - before.cpuMicros;
              pool.requests += results.length;
              pool.rss = Math.max(pool.rss, after.rss);
            }
          }
          const line = opts.paths.map((path) => {
            const pool = pools.get(`${load}/${kind}/${path}`)!;
            return `${path} ${percentile(pool.samples, 50).toFixed(2)}`;
          }).join("  ");
          opts.log(`round ${round}: ${load} client(s), ${kind}, p50 ms so far: ${line}`);
        }
      }
    }
    const results: RequestResult[] = [];
    for (const load of opts.loads) {
      for (const kind of ["stream", "json"] as const) {
        for (const path of opts.paths) {
          const pool = pools.get(`${load}/${kind}/${path}`)!;
          if (pool.errors.length) opts.log(`${path}: errors ${pool.errors.slice(0, 3).join("; ")}`);
          results.push({
            path,
            load,
            kind,
            ok: pool.samples.length,
            failed: pool.errors.length,
            p50: percentile(pool.samples, 50),
            p99: percentile(pool.samples, 99),
            cpuMicrosPerRequest: pool.requests ? pool.cpuMicros / pool.requests : null,
            rssMib: pool.requests ? pool.rss / 1024 / 1024 : null,
          });
        }
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
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function fmt(value: number | null, digits = 2): string {
  if (value === null || !Number.isFinite(value)) return "—";
  return value >= 100 ? value.toFixed(0) : value.toFixed(digits);
}

/** The added figures of `r`: its percentiles less direct's at the same load and kind. */
function added(results: RequestResult[], r: RequestResult) {
  const direct = results.find((d) => d.path === "direct" && d.load === r.load && d.kind === r.kind);
  return direct ? { p50: r.p50 - direct.p50, p99: r.p99 - direct.p99 } : { p50: NaN, p99: NaN };
}

/** The table: one row per load, kind and path, with added latency and its ratio to the floor. */
export function requestTable(results: RequestResult[]): string {
  const rows = results.map((r) => {
    const floor = results.find((f) => f.path === "floor" && f.load === r.load && f.kind === r.kind);
    const mine = added(results, r);
    const floorAdded = floor ? added(results, floor) : undefined;
    const ratio = (a: number, b: number | undefined) =>
      r.path === "direct" || b === undefined || !(b > 0) ? "—" : `${(a / b).toFixed(2)}x`;
    return [
      r.load === 1 ? "sequential" : `${r.load} clients`,
      r.kind === "stream" ? "first text delta" : "whole JSON body",
      r.path,
      `${r.ok}/${r.ok + r.failed}`,
      fmt(r.p50),
      fmt(r.p99),
      r.path === "direct" ? "—" : fmt(mine.p50),
      r.path === "direct" ? "—" : fmt(mine.p99),
      ratio(mine.p50, floorAdded?.p50),
      ratio(mine.p99, floorAdded?.p99),
      fmt(r.cpuMicrosPerRequest, 0),
      fmt(r.rssMib, 1),
    ];
  });
  return markdownTable([
    "load",
    "measured to",
    "path",
    "ok",
    "p50 ms",
    "p99 ms",
    "added p50",
    "added p99",
    "added p50 ÷ floor",
    "added p99 ÷ floor",
    "CPU µs / req",
    "RSS MiB",
  ], rows);
}

/** The issue's request-path targets, checked against one run. */
export function requestVerdicts(results: RequestResult[]): string[] {
  const lines: string[] = [];
  const get = (path: RequestPath, load: number, kind: Kind) =>
    results.find((r) => r.path === path && r.load === load && r.kind === kind);
  const met = (ok: boolean) => (ok ? "met" : "NOT met");
  for (const kind of ["stream", "json"] as const) {
    const floor = get("floor", 1, kind);
    if (!floor) continue;
    const f = added(results, floor);
    for (const [path, slack] of [["sluice", 0.3], ["sluice-prod", 0.5]] as const) {
      const r = get(path, 1, kind);
      if (!r) continue;
      const a = added(results, r);
      lines.push(
        `sequential, ${kind}: ${path} adds ${fmt(a.p50)} ms at p50 against the floor's ` +
          `${fmt(f.p50)} (target <= floor + ${slack}: ${met(a.p50 <= f.p50 + slack)}), ` +
          `${fmt(a.p99)} at p99 against ${fmt(f.p99)} (target <= 1.5x: ${
            met(a.p99 <= 1.5 * Math.max(f.p99, 0))
          })`,
      );
    }
  }
  for (const load of [10, 100]) {
    const floor = get("floor", load, "stream");
    const r = get("sluice", load, "stream");
    if (!floor || !r) continue;
    const a = added(results, r).p50;
    const f = added(results, floor).p50;
    lines.push(
      `${load} clients, first text delta: sluice adds ${fmt(a)} ms at p50, the floor ${fmt(f)} ` +
        `(target <= 1.5x: ${met(a <= 1.5 * Math.max(f, 0))})`,
    );
  }
  // CPU at the busiest load: sequential figures also carry the process's idle work (timers,
  // V8's idle-time collection) spread over few requests.
  const busiest = Math.max(...results.map((r) => r.load));
  for (const kind of ["stream", "json"] as const) {
    const floor = get("floor", busiest, kind)?.cpuMicrosPerRequest ?? NaN;
    for (const path of ["sluice", "sluice-prod"] as const) {
      const mine = get(path, busiest, kind)?.cpuMicrosPerRequest ?? NaN;
      const ratio = mine / floor;
      lines.push(
        `CPU per request at ${busiest} clients, ${kind}: ${path} ${fmt(mine, 0)} µs, the floor ` +
          `${fmt(floor, 0)} µs, ${fmt(ratio)}x (target <= 2x: ${met(ratio <= 2)})`,
      );
    }
  }
  // The peers in the same run: sluice's added latency and CPU against each one's.
  for (const peer of ["portkey"] as const) {
    for (const load of [...new Set(results.map((r) => r.load))]) {
      const theirs = get(peer, load, "stream");
      const ours = get("sluice", load, "stream");
      if (!theirs || !ours) continue;
      const [a, b] = [added(results, ours), added(results, theirs)];
      const cpu = [ours.cpuMicrosPerRequest ?? NaN, theirs.cpuMicrosPerRequest ?? NaN];
      lines.push(
        `${load === 1 ? "sequential" : `${load} clients`}, first text delta: sluice adds ` +
          `${fmt(a.p50)} / ${fmt(a.p99)} ms (p50 / p99), ${peer} ${fmt(b.p50)} / ${fmt(b.p99)} ` +
          `(target below: ${met(a.p50 < b.p50 && a.p99 < b.p99)}); CPU per stream ` +
          `${fmt(cpu[0], 0)} against ${fmt(cpu[1], 0)} µs (target below: ${met(cpu[0] < cpu[1])})`,
      );
    }
  }
  const fresh = get("sluice-prod", 1, "stream");
  const old = get("sluice-history", 1, "stream");
  if (fresh && old) {
    lines.push(
      `a month of history in KV: sluice-prod sequential first-delta p50 ${
        fmt(fresh.p50)
      } ms on a ` +
        `fresh file, ${fmt(old.p50)} ms on the month's (CPU ${fmt(fresh.cpuMicrosPerRequest, 0)}` +
        ` against ${fmt(old.cpuMicrosPerRequest, 0)} µs per request)`,
    );
  }
  return lines;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      loads: { type: "string", default: "1,10,100" },
      rounds: { type: "string", default: "3" },
      sequential: { type: "string", default: "60" },
      "per-client": { type: "string", default: "20" },
      paths: { type: "string", default: REQUEST_PATHS.join(",") },
      history: { type: "string", default: ".sluice/bench-history.sqlite3" },
      before: { type: "string", default: "" },
      json: { type: "boolean", default: false },
    },
  });
  const results = await runRequestBench({
    loads: values.loads.split(",").map(Number),
    rounds: Number(values.rounds),
    sequential: Number(values.sequential),
    perClient: Number(values["per-client"]),
    paths: values.paths.split(",") as RequestPath[],
    historyPath: values.history,
    beforeDir: values.before,
    proxyFlags: Deno.env.get("BENCH_PROXY_FLAGS")?.split(" ").filter(Boolean) ?? [],
  });
  if (values.json) console.log(JSON.stringify(results));
  else console.log(requestTable(results) + "\n\n" + requestVerdicts(results).join("\n"));
}
