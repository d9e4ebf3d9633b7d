/**
 * The chat page in a real browser: Debian's headless Chromium driven by playwright-core, against
 * a sluice on 127.0.0.1 answering from fixtures at a real (fast) pace.
 *
 * The browser is driven from a child process (this same file, run with `deno run`): playwright
 * probes system files at load (`/proc/sys/fs/binfmt_misc/WSLInterop`) that Deno only lets a
 * program read with --allow-all, which the test suite does not have. The child does what a user
 * does and reports what the page showed; the test asserts on that report and on what sluice saw.
 * The child talks only to the sluice the test started; Chromium runs with its background
 * networking off.
 */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { projectFixtures, readFixture, testConfig } from "./helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
const KEY = "browser-test-key";

async function fixtureText(name: string): Promise<string> {
  const accumulator = new EventAccumulator();
  for (const event of decodeAll(await readFixture(`${name}.sse`))) accumulator.push(event);
  return (accumulator.end().message?.content ?? [])
    .map((block) => (block.type === "text" ? block.text : ""))
    .join("");
}

// Functions passed to the page run there, where `document` exists (Deno's types lack the DOM).
// They are passed as functions, not strings: the page's CSP forbids evaluating strings.
// deno-lint-ignore no-explicit-any
declare const document: any, MutationObserver: any;

/** The last answer on the page: its text and state (waiting, streaming, done, stopped, error). */
function lastAnswer(page: Page): Promise<AnswerView> {
  return page.evaluate(() => {
    const answers = document.querySelectorAll("#log .turn.assistant");
    const last = answers[answers.length - 1];
    return {
      count: answers.length as number,
      text: (last?.querySelector(".text")?.textContent ?? "") as string,
      state: (last?.dataset.state ?? "") as string,
      meta: (last?.querySelector(".meta")?.textContent ?? "") as string,
    };
  });
}

/** Waits until the last answer is in `state`. */
function answerState(page: Page, state: string) {
  return page.waitForFunction(
    (wanted) => document.querySelector("#log .turn.assistant:last-child")?.dataset.state === wanted,
    state,
  );
}

/** Waits until the page shows `n` elements matching `selector`. */
function countOf(page: Page, selector: string, n: number) {
  return page.waitForFunction(
    ([css, wanted]) => document.querySelectorAll(css).length === wanted,
    [selector, n] as const,
  );
}

type Step = { text: string; state: string };

/**
 * Records the last answer's text each time the page changes it, with its state at that moment
 * (a MutationObserver runs once per task that changed the DOM, so one record per paint chance).
 */
function recordAnswerSteps(page: Page) {
  return page.evaluate(() => {
    const steps: Step[] = [];
    (globalThis as unknown as { steps: Step[] }).steps = steps;
    new MutationObserver(() => {
      const answers = document.querySelectorAll("#log .turn.assistant");
      const last = answers[answers.length - 1];
      if (!last) return;
      steps.push({
        text: last.querySelector(".text")?.textContent ?? "",
        state: last.dataset.state ?? "",
      });
    }).observe(document.getElementById("log"), {
      subtree: true,
      childList: true,
      characterData: true,
      attributes: true,
    });
  });
}

function answerSteps(page: Page): Promise<Step[]> {
  return page.evaluate(() => (globalThis as unknown as { steps: Step[] }).steps);
}

interface AnswerView {
  count: number;
  text: string;
  state: string;
  meta: string;
}

/** What the page showed, step by step: the child's report. */
interface Report {
  loadStatus: number | undefined;
  title: string;
  logs: number;
  stopDisabledAtStart: boolean;
  withoutKey: AnswerView;
  afterNewChat: AnswerView;
  first: AnswerView;
  firstSteps: Step[];
  second: AnswerView;
  stopped: AnswerView;
  stopDisabledAfterStop: boolean;
  conversationId: string | null;
  shiftEnterValue: string;
  afterReload: AnswerView & { turns: number };
  requested: string[];
}

/** The child: opens the page at `origin` and does what a user would. */
async function drive(origin: string): Promise<Report> {
  // Imported here, in the child only: loading playwright needs --allow-all (see the top).
  const { chromium } = await import("playwright-core");
  const profile = await Deno.makeTempDir({ prefix: "sluice-browser-" });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  try {
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(20_000);
    const requested: string[] = [];
    page.on("request", (request) => requested.push(request.url()));
    const prompt = page.getByLabel("Message", { exact: true });
    const stop = page.getByRole("button", { name: "Stop" });
    const send = async (text: string) => {
      await prompt.fill(text);
      await prompt.press("Enter");
    };

    const response = await page.goto(origin);
    const title = await page.title();
    const logs = await page.getByRole("log").count();
    const stopDisabledAtStart = await stop.isDisabled();

    await send("hello");
    await answerState(page, "error");
    const withoutKey = await lastAnswer(page);
    await page.getByRole("button", { name: "New chat" }).click();
    const afterNewChat = await lastAnswer(page);

    await page.locator("#settings summary").click();
    await page.getByLabel("Gateway key").fill(KEY);
    await page.getByLabel("Gateway key").press("Tab");
    await recordAnswerSteps(page);
    await send("Tell me about sluice");
    await answerState(page, "done");
    const first = await lastAnswer(page);
    const firstSteps = await answerSteps(page);

    await send("now a three word story");
    await countOf(page, "#log .turn.assistant[data-state=done]", 2);
    const second = await lastAnswer(page);

    await send("write an essay");
    await answerState(page, "streaming");
    await stop.click();
    await answerState(page, "stopped");
    const stopped = await lastAnswer(page);
    const stopDisabledAfterStop = await stop.isDisabled();
    const conversationId = await page.evaluate(() => localStorage.getItem("sluice.conversation"));

    await prompt.fill("first line");
    await prompt.press("Shift+Enter");
    await prompt.pressSequentially("second line");
    const shiftEnterValue = await prompt.inputValue();
    await prompt.fill("");

    await page.reload();
    await countOf(page, "#log .turn", 4);
    const afterReload = {
      ...(await lastAnswer(page)),
      turns: await page.locator("#log .turn").count(),
    };

    return {
      loadStatus: response?.status(),
      title,
      logs,
      stopDisabledAtStart,
      withoutKey,
      afterNewChat,
      first,
      firstSteps,
      second,
      stopped,
      stopDisabledAfterStop,
      conversationId,
      shiftEnterValue,
      afterReload,
      requested,
    };
  } finally {
    await context.close();
    await Deno.remove(profile, { recursive: true });
  }
}

if (import.meta.main) {
  console.log(JSON.stringify(await drive(Deno.args[0])));
}

Deno.test("the chat page streams answers, stops on request and keeps the conversation", async (t) => {
  const replay = createReplayFetch(await projectFixtures(), {
    pace: { ttftMs: 150, tokensPerSecond: 120, speed: 1 },
  });
  const sent: { messages: { role: string; content: unknown }[] }[] = [];
  const kv = await Deno.openKv(":memory:");
  const stats = memorySink();
  const app = createApp({
    config: testConfig({ SLUICE_API_KEYS: KEY }),
    logger: silentLogger,
    stats,
    kv,
    upstream: createUpstream({
      mode: "replay",
      apiKey: "replay",
      baseURL: "http://replay.test",
      maxRetries: 0,
      fetch: async (input, init) => {
        sent.push(await new Request(input, init).json());
        return replay(input, init);
      },
    }),
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const origin = `http://127.0.0.1:${server.addr.port}`;
  try {
    const child = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", new URL(import.meta.url).pathname, origin],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(child.stderr);
    assert.equal(child.code, 0, `the browser driver failed:\n${stderr}`);
    const report: Report = JSON.parse(new TextDecoder().decode(child.stdout));
    const essay = await fixtureText("essay");
    const answer = await fixtureText("default");
    const threeWords = await fixtureText("three-words");

    await t.step("the page loads without a key and is labelled for assistive tech", () => {
      assert.equal(report.loadStatus, 200);
      assert.equal(report.title, "sluice chat");
      assert.equal(report.logs, 1);
      assert.equal(report.stopDisabledAtStart, true);
    });

    await t.step("without the gateway key, the answer says why it failed", () => {
      assert.equal(report.withoutKey.state, "error");
      assert.match(report.withoutKey.meta, /authentication_error/);
      assert.equal(report.afterNewChat.count, 0);
    });

    await t.step("with the key, text appears in several steps before the answer completes", () => {
      assert.equal(report.first.state, "done");
      assert.equal(report.first.text, answer);
      assert.match(report.first.meta, /^TTFT \d+ ms · \d+ in \/ \d+ out tokens · /);
      // Renders seen while the answer was still streaming and not yet whole.
      const streaming = report.firstSteps.filter((s) => s.state === "streaming");
      for (const step of streaming) assert.ok(answer.startsWith(step.text));
      const partial = new Set(
        streaming.map((s) => s.text).filter((text) => text !== "" && text.length < answer.length),
      );
      assert.ok(partial.size >= 3, `only ${partial.size} partial renders`);
    });

    await t.step("a second message continues the conversation", () => {
      assert.equal(report.second.text, threeWords);
      const second = sent.find((body) =>
        body.messages.at(-1)?.content === "now a three word story"
      );
      assert.deepEqual(second?.messages, [
        { role: "user", content: "Tell me about sluice" },
        { role: "assistant", content: answer },
        { role: "user", content: "now a three word story" },
      ]);
    });

    await t.step("Stop aborts the answer and the upstream; nothing half is kept", async () => {
      assert.equal(report.stopped.state, "stopped");
      assert.ok(report.stopped.text.length > 0);
      assert.ok(essay.startsWith(report.stopped.text));
      assert.ok(report.stopped.text.length < essay.length);
      assert.equal(report.stopDisabledAfterStop, true);
      for (let i = 0; i < 200 && !stats.records.some((r) => r.outcome === "client_aborted"); i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(stats.records.filter((r) => r.outcome === "client_aborted").length, 1);
      const stored = await (await app.request(`/conversations/${report.conversationId}`, {
        headers: { authorization: `Bearer ${KEY}` },
      })).json();
      assert.equal(stored.messages.length, 4);
      assert.equal(stored.messages.at(-1).content, threeWords);
    });

    await t.step("Shift+Enter adds a line instead of sending", () => {
      assert.equal(report.shiftEnterValue, "first line\nsecond line");
      // hello (refused before upstream), the answer, the three words, the essay: no more.
      assert.equal(sent.length, 3);
    });

    await t.step("after a reload the stored conversation is shown again", () => {
      assert.equal(report.afterReload.turns, 4);
      assert.equal(report.afterReload.text, threeWords);
    });

    await t.step("the page fetched nothing but sluice itself", () => {
      assert.ok(report.requested.length > 0);
      const elsewhere = report.requested.filter((url) =>
        !url.startsWith(origin) && !url.startsWith("data:")
      );
      assert.deepEqual(elsewhere, []);
    });
  } finally {
    await server.shutdown();
    kv.close();
  }
});
