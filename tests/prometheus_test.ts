/**
 * A real Prometheus (Debian's `prometheus` package; .ci/run installs it) scraping a real sluice
 * on 127.0.0.1 with deploy/prometheus.yml (target and interval replaced): what PromQL reads off
 * `/metrics` must agree with `/stats`, and deploy/'s config and rules must pass `promtool`.
 */
import assert from "node:assert/strict";
import { bucketUpperMs } from "../lib/stats/histogram.ts";
import { EXPORTED_EDGES } from "../lib/stats/prometheus.ts";
import type { StatsReport } from "../lib/stats/report.ts";
import { serveOnLoopback } from "./helpers.ts";
import { timedStatsApp } from "./stats_support.ts";

const DEPLOY = new URL("../deploy/", import.meta.url);

async function run(command: string, args: string[]) {
  const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, text };
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

Deno.test("deploy/'s Prometheus config and rules pass promtool", async () => {
  const rules = await run("promtool", [
    "check",
    "rules",
    new URL("sluice_rules.yml", DEPLOY).pathname,
  ]);
  assert.equal(rules.code, 0, rules.text);
  assert.match(rules.text, /SUCCESS: \d+ rules found/);
  const config = await run("promtool", [
    "check",
    "config",
    new URL("prometheus.yml", DEPLOY).pathname,
  ]);
  assert.equal(config.code, 0, config.text);
});

Deno.test("PromQL over a real Prometheus's scrapes agrees with /stats", async (t) => {
  const kv = await Deno.openKv(":memory:");
  const { app, stats } = await timedStatsApp({ kv });
  const sluice = serveOnLoopback(app);
  const dir = await Deno.makeTempDir({ prefix: "sluice-prometheus-" });
  const port = freePort();
  const shipped = await Deno.readTextFile(new URL("prometheus.yml", DEPLOY));
  await Deno.copyFile(new URL("sluice_rules.yml", DEPLOY), `${dir}/sluice_rules.yml`);
  await Deno.writeTextFile(
    `${dir}/prometheus.yml`,
    shipped
      .replace(/scrape_interval: \S+/, "scrape_interval: 1s")
      .replace(/evaluation_interval: \S+/, "evaluation_interval: 1s")
      .replace('"localhost:8000"', `"${new URL(sluice.url).host}"`),
  );
  const prometheus = new Deno.Command("prometheus", {
    args: [
      `--config.file=${dir}/prometheus.yml`,
      `--storage.tsdb.path=${dir}/data`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const query = async (promql: string): Promise<number | null> => {
    const url = `http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(promql)}`;
    try {
      const body = await (await fetch(url)).json();
      const result = body.data?.result?.[0];
      return result ? Number(result.value[1]) : null;
    } catch {
      return null; // not up yet
    }
  };
  try {
    // A spread of answers, streamed and not, on priced models, so the TTFT histogram has more
    // than one bucket and cost is not zero.
    const fixtures = ["three-words", "essay", "default", "thinking", "citations", "prompt-cache"];
    let sent = 0;
    for (const fixture of fixtures) {
      for (const stream of [true, false]) {
        const response = await fetch(`${sluice.url}/v1/messages`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-sluice-fixture": fixture },
          body: JSON.stringify({
            model: fixture === "prompt-cache" ? "claude-opus-5-5" : "claude-sonnet-5-5",
            max_tokens: 1024,
            stream,
            messages: [{ role: "user", content: "hello" }],
          }),
        });
        await response.arrayBuffer();
        sent++;
      }
    }
    await stats.flush();
    const report: StatsReport = await (await fetch(`${sluice.url}/stats`)).json();
    assert.equal(report.requests.total, sent);
    // Wait (bounded) for a scrape that saw every request.
    let seen: number | null = null;
    for (let i = 0; i < 300 && seen !== sent; i++) {
      seen = await query("sum(sluice_requests_total)");
      if (seen !== sent) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(seen, sent, "Prometheus scraped every request");

    await t.step("token and cost counters equal /stats' totals", async () => {
      for (const type of ["input", "output", "cache_creation_input", "cache_read_input"] as const) {
        assert.equal(
          await query(`sum(sluice_tokens_total{type="${type}"})`),
          report.tokens[type],
          type,
        );
      }
      const cost = await query("sum(sluice_cost_usd_total)");
      assert.ok(cost !== null && report.cost_usd.total > 0);
      assert.ok(
        Math.abs(cost - report.cost_usd.total) < 1e-6,
        `${cost} vs ${report.cost_usd.total}`,
      );
    });

    await t.step(
      "histogram_quantile of the TTFT histogram lands in /stats' p50 bucket",
      async () => {
        for (const streaming of [true, false]) {
          const promql = `histogram_quantile(0.5, sum by (le) ` +
            `(sluice_ttft_seconds_bucket{streaming="${streaming}",outcome="ok"}))`;
          const fromPrometheus = (await query(promql))! * 1000;
          const fromStats = report.ttft_ms[streaming ? "streaming" : "non_streaming"].p50!;
          // The exported edges (3 per decade): both must fall in the same one.
          const edges = EXPORTED_EDGES.map((k) => bucketUpperMs(k));
          const bucket = (ms: number) => edges.findIndex((edge) => ms <= edge * (1 + 1e-9));
          assert.equal(
            bucket(fromPrometheus),
            bucket(fromStats),
            `${fromPrometheus} vs ${fromStats}`,
          );
        }
      },
    );

    await t.step("the shipped recording rules evaluate over sluice's series", async () => {
      let p50: number | null = null;
      for (let i = 0; i < 100 && p50 === null; i++) {
        // A rate over one unchanged counter is 0, so this rule's histogram_quantile is NaN: its
        // series exists once the rule has run, which is what is checked here.
        p50 = await query('count(sluice:ttft_seconds:p50_5m{streaming="true"})');
        if (p50 === null) await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(p50, 1);
    });
  } finally {
    prometheus.kill("SIGTERM");
    await prometheus.stderr.cancel();
    await prometheus.status;
    await sluice.close();
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});
