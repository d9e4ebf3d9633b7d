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
  /** An instant query at `time` (s): a vector's [time, value] or a matrix's samples. */
  const queryAt = async (
    promql: string,
    time: number,
    type: "vector" | "matrix",
  ): Promise<[number, string][]> => {
    const url = `http://127.0.0.1:${port}/api/v1/query?time=${time}&query=` +
      encodeURIComponent(promql);
    const body = await (await fetch(url)).json();
    assert.equal(body.data?.resultType, type, `${promql}: ${JSON.stringify(body)}`);
    const first = body.data.result[0];
    return type === "vector" ? [first.value] : first.values;
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

    await t.step(
      "rate() over the cost and token counters agrees with /stats' increase",
      async () => {
        // Three more prompt-cache answers on claude-opus-5-5: 3 × $0.29304 and 3 × 412 output
        // tokens (cost_test.ts works out the price), counted by /stats as well.
        const before: StatsReport = await (await fetch(`${sluice.url}/stats`)).json();
        for (let i = 0; i < 3; i++) {
          const response = await fetch(`${sluice.url}/v1/messages`, {
            method: "POST",
            headers: { "content-type": "application/json", "x-sluice-fixture": "prompt-cache" },
            body: JSON.stringify({
              model: "claude-opus-5-5",
              max_tokens: 1024,
              messages: [{ role: "user", content: "hello" }],
            }),
          });
          await response.arrayBuffer();
        }
        await stats.flush();
        const after: StatsReport = await (await fetch(`${sluice.url}/stats`)).json();
        const costDelta = after.cost_usd.by_model["claude-opus-5-5"] -
          before.cost_usd.by_model["claude-opus-5-5"];
        assert.ok(Math.abs(costDelta - 3 * 0.29304) < 1e-9);
        const outputDelta = after.by_model["claude-opus-5-5"].tokens.output -
          before.by_model["claude-opus-5-5"].tokens.output;
        assert.equal(outputDelta, 3 * 412);
        let total: number | null = null;
        for (let i = 0; i < 300 && total !== sent + 3; i++) {
          total = await query("sum(sluice_requests_total)");
          if (total !== sent + 3) await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(total, sent + 3, "Prometheus scraped the new requests");
        const series = [
          { selector: 'sluice_cost_usd_total{model="claude-opus-5-5"}', delta: costDelta },
          {
            // One series, so its raw samples can be read: the new answers are all non-streamed.
            selector: 'sluice_tokens_total{model="claude-opus-5-5",type="output",' +
              'streaming="false",outcome="ok",endpoint="/v1/messages"}',
            delta: outputDelta,
          },
        ];
        const at = Date.now() / 1000;
        for (const { selector, delta } of series) {
          // The raw samples of the last minute (every scrape since the series appeared) ...
          const samples = await queryAt(`${selector}[1m]`, at, "matrix");
          const values = samples.map(([, v]) => Number(v));
          const raw = values.at(-1)! - values[0];
          assert.ok(Math.abs(raw - delta) < 1e-6, `${selector}: ${raw} vs ${delta}`);
          // ... and rate(), which extrapolates that increase to the window: never below it, never
          // beyond the window's share the samples cover.
          const rate = Number((await queryAt(`rate(${selector}[1m])`, at, "vector"))[0][1]);
          const covered = samples.at(-1)![0] - samples[0][0];
          assert.ok(rate * 60 >= delta * (1 - 1e-6), `${selector}: rate ${rate}`);
          assert.ok(rate * 60 <= delta * (60 / covered) * (1 + 1e-6), `${selector}: rate ${rate}`);
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
