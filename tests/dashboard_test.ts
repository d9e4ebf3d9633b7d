/**
 * The dashboard in headless Chromium (playwright-core, as tests/browser_test.ts drives it, from a
 * child process run with --allow-all for the same reason): it asks for the admin key, then shows
 * the figures `/stats` holds and draws its charts, at desktop and phone widths.
 *
 * `deno run -A tests/dashboard_test.ts ORIGIN DIR` drives a running sluice and leaves the two
 * screenshots in DIR (how docs/images/dashboard-*.png were made).
 */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { serveOnLoopback } from "./helpers.ts";
import { timedStatsApp } from "./stats_support.ts";

const CHROMIUM = "/usr/bin/chromium";
const ADMIN_KEY = "dashboard-admin-key";

// deno-lint-ignore no-explicit-any
declare const document: any;

/** How the dashboard writes a duration: whole ms under a second, else seconds to 2 places. */
function shownMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

interface View {
  figures: Record<string, string>;
  /** Charts drawn, by element id, with their canvas width. */
  canvases: Record<string, number>;
  /** The widest element, to catch a page wider than the screen. */
  scrollWidth: number;
}

function view(page: Page): Promise<View> {
  return page.evaluate(() => {
    const figures: Record<string, string> = {};
    for (const dd of document.querySelectorAll("#figures dd")) {
      figures[dd.dataset.figure] = dd.textContent;
    }
    const canvases: Record<string, number> = {};
    for (const chart of document.querySelectorAll(".chart")) {
      const canvas = chart.querySelector("canvas");
      if (canvas) canvases[chart.id] = canvas.getBoundingClientRect().width;
    }
    return { figures, canvases, scrollWidth: document.documentElement.scrollWidth };
  });
}

/** The child: opens the dashboard, enters the key, reads what it shows at two widths. */
async function drive(origin: string, shots: string) {
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
  });
  try {
    const out: Record<string, unknown> = {};
    for (const [name, width, height] of [["desktop", 1280, 1400], ["phone", 390, 2200]] as const) {
      const page = await browser.newPage({ viewport: { width, height } });
      page.setDefaultTimeout(20_000);
      const errors: string[] = [];
      page.on("pageerror", (error) => errors.push(String(error)));
      page.on("console", (message) => {
        // The reads before the key is entered are refused: that 401 is expected.
        const expected = /status of 401/.test(message.text());
        if (message.type() === "error" && !expected) errors.push(message.text());
      });
      await page.goto(`${origin}/dashboard`);
      await page.getByLabel("Admin key").fill(ADMIN_KEY);
      await page.getByRole("button", { name: "Show" }).click();
      await page.waitForFunction(() => document.body.dataset.ready === "true");
      // A second read, so the charts over time have two points.
      await page.waitForFunction(() =>
        /updated/.test(document.getElementById("status").textContent)
      );
      await page.waitForTimeout(2500);
      out[name] = { ...(await view(page)), errors, width };
      await page.screenshot({ path: `${shots}/dashboard-${name}.png`, fullPage: true });
      await page.close();
    }
    return out;
  } finally {
    await browser.close();
  }
}

if (import.meta.main) {
  console.log(JSON.stringify(await drive(Deno.args[0], Deno.args[1])));
}

Deno.test("the dashboard shows /stats' figures and draws its charts, desktop and phone", async (t) => {
  const kv = await Deno.openKv(":memory:");
  const { app, stats } = await timedStatsApp({ kv, env: { SLUICE_ADMIN_KEY: ADMIN_KEY } });
  const sluice = serveOnLoopback(app);
  const shots = await Deno.makeTempDir({ prefix: "sluice-dashboard-" });
  try {
    for (const fixture of ["three-words", "essay", "default", "prompt-cache", "overloaded"]) {
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
      }
    }
    await stats.flush();
    const report = await (await fetch(`${sluice.url}/stats`, {
      headers: { "x-api-key": ADMIN_KEY },
    })).json();

    const child = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", new URL(import.meta.url).pathname, sluice.url, shots],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(child.stderr);
    assert.equal(child.code, 0, `the browser driver failed:\n${stderr}`);
    const views = JSON.parse(new TextDecoder().decode(child.stdout)) as Record<
      string,
      View & { errors: string[]; width: number }
    >;

    for (const [name, shown] of Object.entries(views)) {
      await t.step(`${name}: the figures are /stats'`, () => {
        assert.deepEqual(shown.errors, []);
        assert.equal(shown.figures.requests, String(report.requests.total));
        assert.equal(shown.figures["input-tokens"], String(report.tokens.input));
        assert.equal(shown.figures["output-tokens"], String(report.tokens.output));
        assert.equal(shown.figures.cost, `$${report.cost_usd.total.toFixed(6)}`);
        assert.equal(shown.figures.errors, String(report.requests.errors));
        assert.equal(shown.figures["ttft-streaming"], shownMs(report.ttft_ms.streaming.p50));
        assert.equal(
          shown.figures["ttft-non-streaming"],
          shownMs(report.ttft_ms.non_streaming.p50),
        );
      });
      await t.step(`${name}: every chart is drawn, within the screen`, async () => {
        const ids = [
          "ttft-streaming",
          "ttft-non-streaming",
          "tokens-chart",
          "cost-key-chart",
          "cost-model-chart",
          "errors-chart",
        ];
        assert.deepEqual(Object.keys(shown.canvases).sort(), ids.sort());
        for (const id of ids) assert.ok(shown.canvases[id] > 150, `${id}: ${shown.canvases[id]}`);
        assert.ok(shown.scrollWidth <= shown.width, `page ${shown.scrollWidth} px wide`);
        const png = await Deno.readFile(`${shots}/dashboard-${name}.png`);
        assert.deepEqual([...png.slice(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
      });
    }
  } finally {
    await sluice.close();
    kv.close();
    await Deno.remove(shots, { recursive: true });
  }
});

Deno.test("the vendored uPlot is the version deno.json pins", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const pinned = /^npm:uplot@(\d+\.\d+\.\d+)$/.exec(config.imports.uplot)?.[1];
  assert.ok(pinned, config.imports.uplot);
  // uPlot.min.css, copied from the same package, carries no version line.
  const path = new URL("../lib/dashboard/vendor/uPlot.iife.min.js", import.meta.url);
  const text = await Deno.readTextFile(path);
  assert.ok(text.startsWith(`/*! https://github.com/leeoniya/uPlot (v${pinned})`));
});
