/**
 * `deno task bench`: the accumulator benchmarks (`deno bench --json`, in a subprocess), the
 * request path (bench/request_bench.ts) and the gateway comparison on loopback, printed as
 * tables with ratios and the targets of issues 6 and 13.
 *
 * Options: --levels 1,100,1000,1000@100 (gateway levels; `N@MS` = N streams, a delta every MS
 * ms), --deltas 100, --runs 10 (sequential streams at level 1), --rounds 2 (each level runs that
 * many times, paths interleaved, samples pooled), --skip-accumulator, --skip-request,
 * --skip-gateway. The request section's own options are bench/request_bench.ts's
 * (`deno task bench:request`). The report is markdown on stdout; progress goes to stderr.
 */
import { parseArgs } from "node:util";
import { accumulatorStreams, type BenchStream } from "./streams.ts";
import { markdownTable } from "./report.ts";
import { gatewayTable, gatewayVerdicts, parseLevel, runGatewayBench } from "./gateway_bench.ts";
import { requestTable, requestVerdicts, runRequestBench } from "./request_bench.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    levels: { type: "string", default: "1,100,1000,1000@100" },
    deltas: { type: "string", default: "100" },
    runs: { type: "string", default: "10" },
    rounds: { type: "string", default: "2" },
    "skip-accumulator": { type: "boolean", default: false },
    "skip-request": { type: "boolean", default: false },
    "skip-gateway": { type: "boolean", default: false },
  },
});

interface BenchResult {
  group: string;
  name: string;
  avgNs: number;
  minNs: number;
}

async function machine(): Promise<string> {
  // Deno reads /proc only with --allow-all; `cat` needs nothing more than the --allow-run the
  // bench has anyway (it spawns deno).
  const cpuinfo = await new Deno.Command("cat", { args: ["/proc/cpuinfo"], stdout: "piped" })
    .output().then((o) => new TextDecoder().decode(o.stdout)).catch(() => "");
  const model = /model name\s*:\s*(.+)/.exec(cpuinfo)?.[1] ?? "unknown CPU";
  const load = Deno.loadavg().map((n) => n.toFixed(2)).join(" ");
  return `${navigator.hardwareConcurrency} cores (nproc), ${model}, Deno ${Deno.version.deno} ` +
    `(V8 ${Deno.version.v8}); load average before the run: ${load}`;
}

/**
 * Runs `deno bench --json` once per group, each in a fresh process: in one process the scaling
 * group ran after the SDK benches and inherited their heap and JIT state (the 100k-delta stream
 * measured 3-5% slower than when run alone).
 */
async function accumulatorBench(): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  for (const group of ["text", "tool", "scaling"]) results.push(...await benchGroup(group));
  return results;
}

async function benchGroup(group: string): Promise<BenchResult[]> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "bench",
      "--config",
      new URL("../deno.json", import.meta.url).pathname,
      "--allow-read",
      "--allow-env",
      "--json",
      "--filter",
      `/^${group}: /`,
      new URL("./accumulator_bench.ts", import.meta.url).pathname,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!output.success) throw new Error("deno bench failed");
  const report = JSON.parse(new TextDecoder().decode(output.stdout));
  return report.benches.map((bench: {
    group: string;
    name: string;
    results: { ok?: { avg: number; min: number } }[];
  }) => {
    const ok = bench.results[0]?.ok;
    if (!ok) throw new Error(`bench "${bench.name}" failed`);
    return { group: bench.group, name: bench.name, avgNs: ok.avg, minNs: ok.min };
  });
}

/** Which bytes a bench consumed, for events/s and MB/s. */
function consumed(result: BenchResult, streams: Record<string, BenchStream>) {
  if (result.group !== "scaling") {
    return { events: streams[result.group].events, bytes: streams[result.group].bytes };
  }
  if (result.name.includes("100k")) {
    return { events: streams.long.events, bytes: streams.long.bytes };
  }
  const copies = result.name.includes("1,000 streams") ? 1000 : 1;
  return { events: streams.short.events * copies, bytes: streams.short.bytes * copies };
}

function accumulatorReport(results: BenchResult[]): string {
  const streams = accumulatorStreams();
  const rows = results.map((r) => {
    const { events, bytes } = consumed(r, streams);
    const floor = results.find((f) => f.group === r.group && f.name.includes("floor"));
    const sdk = results.find((f) => f.group === r.group && f.name.includes("SDK"));
    return [
      r.name,
      (r.avgNs / 1e6).toFixed(2),
      (r.minNs / 1e6).toFixed(2),
      (r.avgNs / events).toFixed(0),
      (events / (r.avgNs / 1e9) / 1e6).toFixed(2),
      (bytes / (r.avgNs / 1e9) / 1e6).toFixed(0),
      floor ? `${(r.avgNs / floor.avgNs).toFixed(2)}x` : "—",
      sdk ? `${(sdk.avgNs / r.avgNs).toFixed(2)}x` : "—",
    ];
  });
  const table = markdownTable(
    [
      "bench",
      "avg ms",
      "min ms",
      "ns / event",
      "M events/s",
      "MB/s",
      "time ÷ floor",
      "SDK time ÷ this",
    ],
    rows,
  );
  const find = (group: string, part: string) =>
    results.find((r) => r.group === group && r.name.includes(part))!;
  const verdicts: string[] = [];
  for (const group of ["text", "tool"]) {
    const floor = find(group, "floor");
    const sluice = find(group, "decoder + accumulator");
    const tapped = find(group, "tapStream");
    const sdk = find(group, "SDK");
    const vsSdk = sdk.avgNs / sluice.avgNs;
    const vsFloor = sluice.avgNs / floor.avgNs;
    verdicts.push(
      `${group}: sluice is ${vsSdk.toFixed(2)}x the SDK's throughput (target >= 3x: ${
        vsSdk >= 3 ? "met" : "NOT met"
      }; through tapStream ${(sdk.avgNs / tapped.avgNs).toFixed(2)}x) and takes ${
        vsFloor.toFixed(2)
      }x the floor's time (target <= 1.5x: ${vsFloor <= 1.5 ? "met" : "NOT met"})`,
    );
  }
  const perEvent = (part: string) => {
    const r = find("scaling", part);
    return r.avgNs / consumed(r, streams).events;
  };
  const short = perEvent("one after another");
  const kept = perEvent("all kept");
  const long = perEvent("100k");
  const hot = perEvent("the same bytes");
  verdicts.push(
    `scaling: ${long.toFixed(0)} ns/event for one 100k-delta stream vs ${short.toFixed(0)} for ` +
      `100-delta streams (${(long / short).toFixed(2)}x; target <= 1x: ${
        long <= short ? "met" : "NOT met"
      }), ${kept.toFixed(0)} for 1,000 kept 100-delta streams (${(long / kept).toFixed(2)}x), ` +
      `and ${hot.toFixed(0)} for one 100-delta stream whose bytes stay in cache`,
  );
  return table + "\n\n" + verdicts.map((v) => `- ${v}`).join("\n");
}

console.log(`Machine: ${await machine()}\n`);
if (!values["skip-accumulator"]) {
  console.error("accumulator benchmarks (deno bench) …");
  const section = "### Accumulator throughput\n\n" + accumulatorReport(await accumulatorBench());
  console.log(section + "\n");
}
if (!values["skip-request"]) {
  console.error("request path on loopback …");
  const results = await runRequestBench();
  const section = "### Request path on loopback\n\n" + requestTable(results) + "\n\n" +
    requestVerdicts(results).map((v) => `- ${v}`).join("\n");
  console.log(section + "\n");
}
if (!values["skip-gateway"]) {
  console.error("gateway comparison on loopback …");
  const results = await runGatewayBench({
    levels: values.levels.split(",").map(parseLevel),
    deltas: Number(values.deltas),
    sequentialRuns: Number(values.runs),
    rounds: Number(values.rounds),
  });
  const section = "### Gateway overhead on loopback\n\n" + gatewayTable(results) + "\n\n" +
    gatewayVerdicts(results).map((v) => `- ${v}`).join("\n");
  console.log(section + "\n");
}
