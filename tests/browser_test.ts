/**
 * The chat page in a real browser: Debian's headless Chromium driven by playwright-core, against
 * a sluice on 127.0.0.1 answering from fixtures at a real (fast) pace (tests/browser_support.ts
 * says why the browser runs in a child process). This file: a conversation as a user has it.
 * Rendering and scrolling: browser_render_test.ts; a dropped connection: browser_resume_test.ts.
 */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { decodeAll } from "../lib/stream/sse.ts";
import { readFixture } from "./helpers.ts";
import {
  folded,
  NUMBERED_ANSWER,
  runDriver,
  SCREENSHOTS,
  startPageServer,
  withBrowser,
} from "./browser_support.ts";

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
      // Rendered markdown: its text with whitespace folded (blocks add line breaks).
      text: (last?.querySelector(".text")?.textContent ?? "").replace(/\s+/g, " ").trim() as string,
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
        text: (last.querySelector(".text")?.textContent ?? "").replace(/\s+/g, " ").trim(),
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

/** How the page explained the missing gateway key. */
interface MissingKeyView {
  /** How many times the page's visible text says a key is needed. */
  mentions: number;
  status: string;
  /** The explanation is inside the viewport, above the sticky composer. */
  inView: boolean;
  settingsOpenAfterClick: boolean;
  focusedAfterClick: string;
}

/** What the page showed, step by step: the child's report. */
interface Report {
  loadStatus: number | undefined;
  title: string;
  logs: number;
  stopDisabledAtStart: boolean;
  withoutKey: AnswerView;
  missingKey: MissingKeyView;
  afterNewChat: AnswerView;
  timing: { label: string; waitShare: number } | null;
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
function drive(origin: string): Promise<Report> {
  return withBrowser(async (context) => {
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
    const seen = await page.evaluate(() => {
      const alert = document.querySelector("#log .turn.assistant .error");
      const box = alert.getBoundingClientRect();
      const footer = document.querySelector("footer").getBoundingClientRect();
      return {
        mentions: (document.body.innerText.match(/needs a gateway key/g) ?? []).length as number,
        status: document.getElementById("status").textContent as string,
        inView: (box.top >= 0 && box.bottom <= footer.top) as boolean,
      };
    });
    await page.screenshot({ path: new URL("missing-key.png", SCREENSHOTS).pathname });
    await page.getByRole("button", { name: "Open Settings" }).click();
    const missingKey: MissingKeyView = {
      ...seen,
      settingsOpenAfterClick: await page.evaluate(() => document.getElementById("settings").open),
      focusedAfterClick: await page.evaluate(() => document.activeElement?.id ?? ""),
    };
    await page.getByRole("button", { name: "New chat" }).click();
    const afterNewChat = await lastAnswer(page);

    await page.getByLabel("Gateway key").fill(KEY);
    await page.getByLabel("Gateway key").press("Tab");
    await recordAnswerSteps(page);
    await send("Tell me about sluice");
    await answerState(page, "done");
    const first = await lastAnswer(page);
    const firstSteps = await answerSteps(page);
    const timing = await page.evaluate(() => {
      const bar = document.querySelector("#log .turn.assistant:last-child .timing");
      if (!bar) return null;
      return {
        label: bar.getAttribute("aria-label") as string,
        waitShare: bar.querySelector(".wait").getBoundingClientRect().width /
          bar.getBoundingClientRect().width as number,
      };
    });

    await send("now a three word story");
    await countOf(page, "#log .turn.assistant[data-state=done]", 2);
    const second = await lastAnswer(page);

    await send("[fixture:numbered] a long answer, please");
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
      missingKey,
      afterNewChat,
      timing,
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
  });
}

if (import.meta.main) {
  console.log(JSON.stringify(await drive(Deno.args[0])));
}

Deno.test("the chat page streams answers, stops on request and keeps the conversation", async (t) => {
  await Deno.mkdir(SCREENSHOTS, { recursive: true });
  const sluice = await startPageServer({ env: { SLUICE_API_KEYS: KEY } });
  const { app, stats, sent, origin } = sluice;
  try {
    const report = await runDriver<Report>(import.meta.url, [origin]);
    const long = folded(NUMBERED_ANSWER);
    const defaultText = await fixtureText("default");
    const answer = folded(defaultText);
    const threeWords = await fixtureText("three-words");

    await t.step("the page loads without a key and is labelled for assistive tech", () => {
      assert.equal(report.loadStatus, 200);
      assert.equal(report.title, "sluice chat");
      assert.equal(report.logs, 1);
      assert.equal(report.stopDisabledAtStart, true);
    });

    await t.step(
      "without the gateway key, the answer says once, in view, that Settings takes it",
      () => {
        assert.equal(report.withoutKey.state, "error");
        assert.match(report.withoutKey.meta, /needs a gateway key\. Enter it in Settings/);
        assert.equal(report.missingKey.mentions, 1);
        assert.equal(report.missingKey.status, "");
        assert.equal(report.missingKey.inView, true);
        assert.equal(report.missingKey.settingsOpenAfterClick, true);
        assert.equal(report.missingKey.focusedAfterClick, "key");
        assert.equal(report.afterNewChat.count, 0);
      },
    );

    await t.step("with the key, text appears in several steps before the answer completes", () => {
      assert.equal(report.first.state, "done");
      assert.equal(report.first.text, answer);
      assert.match(report.first.meta, /^TTFT \d+ ms · \d+ in \/ \d+ out tokens · \d+ ms/);
      // Renders seen while the answer was still streaming and not yet whole.
      const streaming = report.firstSteps.filter((s) => s.state === "streaming");
      for (const step of streaming) assert.ok(answer.startsWith(step.text));
      const partial = new Set(
        streaming.map((s) => s.text).filter((text) => text !== "" && text.length < answer.length),
      );
      assert.ok(partial.size >= 3, `only ${partial.size} partial renders`);
    });

    await t.step(
      "the answer's bar shows its time to first token as a share of its whole time",
      () => {
        const [, ttft, total] = /^TTFT (\d+) ms · .* · (\d+) ms/.exec(report.first.meta) ?? [];
        assert.ok(report.timing, "no timing bar");
        assert.equal(report.timing.label, `first token after ${ttft} ms of ${total} ms`);
        assert.ok(
          Math.abs(report.timing.waitShare - Number(ttft) / Number(total)) < 0.02,
          `wait share ${report.timing.waitShare} for ${ttft} of ${total} ms`,
        );
      },
    );

    await t.step("a second message continues the conversation", () => {
      assert.equal(report.second.text, threeWords);
      const second = sent.find((body) =>
        body.messages.at(-1)?.content === "now a three word story"
      );
      assert.deepEqual(second?.messages, [
        { role: "user", content: "Tell me about sluice" },
        { role: "assistant", content: defaultText },
        { role: "user", content: "now a three word story" },
      ]);
    });

    await t.step("Stop aborts the answer and the upstream; nothing half is kept", async () => {
      assert.equal(report.stopped.state, "stopped");
      assert.ok(report.stopped.text.length > 0);
      assert.ok(long.startsWith(report.stopped.text));
      assert.ok(report.stopped.text.length < long.length);
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
      // hello (refused before upstream), the answer, the three words, the long one: no more.
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
    await sluice.close();
  }
});
