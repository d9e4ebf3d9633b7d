/**
 * The chat page's rendering in headless Chromium, at a desktop (1280x800) and a phone (390x844)
 * width, in light and dark: markdown rendered as it streams (completed blocks once, only the
 * open block again), code highlighted with a working Copy button, hostile HTML inert, and
 * scrolling that follows the answer until the reader scrolls up. Screenshots go to
 * tests/screenshots/ (gitignored): look at them after a change to the page.
 */
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import {
  folded,
  HOSTILE_ANSWER,
  MARKDOWN_ANSWER,
  runDriver,
  SCREENSHOTS,
  startPageServer,
  withBrowser,
} from "./browser_support.ts";

// Functions passed to the page run there, where `document` exists (Deno's types lack the DOM).
// deno-lint-ignore no-explicit-any
type Dom = any;
declare const document: Dom, MutationObserver: Dom, navigator: Dom, getComputedStyle: Dom;
declare const innerHeight: number;

const VIEWS = [
  { name: "desktop-light", width: 1280, height: 800, colorScheme: "light" },
  { name: "desktop-dark", width: 1280, height: 800, colorScheme: "dark" },
  { name: "phone-light", width: 390, height: 844, colorScheme: "light" },
  { name: "phone-dark", width: 390, height: 844, colorScheme: "dark" },
] as const;

/** What one view showed. */
interface ViewReport {
  name: string;
  background: string;
  /** The user's new turn, right after sending: inside the viewport, above the composer. */
  newTurnInView: boolean;
  /** While streaming, with the page taller than the window: px from the end, at each sample. */
  followGaps: number[];
  atDone: { gap: number; statsAboveComposer: boolean; pageTaller: boolean };
  rendered: {
    h1: number;
    h2: number;
    orderedItems: number;
    bulletItems: number;
    tableCells: number;
    strong: number;
    codeBlocks: number;
    copyButtons: number;
    highlighted: number;
    monospace: boolean;
    text: string;
  };
  /** Nodes removed outside the open block while streaming (completed blocks never are). */
  removedOutsideOpen: number;
  /** Times a completed block was added (it grows block by block). */
  committedAdds: number;
  scrolledUp: { jumpVisible: boolean; stayed: boolean; afterJumpGap: number; jumpHidden: boolean };
  copied: string;
  horizontalOverflow: boolean;
}

interface Report {
  views: ViewReport[];
  hostile: {
    pwned: unknown;
    dialogs: number;
    violations: string[];
    scripts: number;
    handlers: number;
    javascriptUrls: number;
    text: string;
  };
}

const gap = (page: Page) =>
  page.evaluate(() => {
    const root = document.documentElement;
    return root.scrollHeight - (root.scrollTop + root.clientHeight) as number;
  });

const lastState = (page: Page, state: string) =>
  page.waitForFunction(
    (wanted) => document.querySelector("#log .turn.assistant:last-child")?.dataset.state === wanted,
    state,
  );

async function send(page: Page, text: string) {
  const prompt = page.getByLabel("Message", { exact: true });
  await prompt.fill(text);
  await prompt.press("Enter");
}

/** Watches the last answer's DOM: removals outside its open block, completed blocks added. */
function watchAnswer(page: Page) {
  return page.evaluate(() => {
    const body = document.querySelector("#log .turn.assistant:last-child .text");
    const seen = { removedOutsideOpen: 0, committedAdds: 0 };
    (globalThis as unknown as { seen: typeof seen }).seen = seen;
    new MutationObserver((records: { target: unknown; removedNodes: unknown[] }[]) => {
      for (const record of records) {
        const inOpen = record.target !== body;
        if (!inOpen) {
          seen.removedOutsideOpen += record.removedNodes.length;
          seen.committedAdds += 1;
        }
      }
    }).observe(body, { childList: true });
    // Changes below the container's children: anything not inside the open block counts.
    new MutationObserver((records: { target: { closest(s: string): unknown } }[]) => {
      for (const record of records) {
        if (!record.target.closest(".open-block")) seen.removedOutsideOpen += 1;
      }
    }).observe(body, { subtree: true, characterData: true, attributes: true });
  });
}

async function oneView(page: Page, view: (typeof VIEWS)[number]): Promise<ViewReport> {
  await page.setViewportSize({ width: view.width, height: view.height });
  await page.emulateMedia({ colorScheme: view.colorScheme });
  await page.getByRole("button", { name: "New chat" }).click();
  const background = await page.evaluate(() =>
    getComputedStyle(document.documentElement).backgroundColor as string
  );

  // A first answer fills the page, so the next turn starts far below the top.
  await send(page, "[fixture:markdown] tell me about sluices");
  await page.waitForFunction(() =>
    document.querySelector("#log .turn.assistant:last-child")?.dataset.state === "waiting"
  );
  await lastState(page, "done");

  await send(page, "[fixture:markdown] and again");
  const newTurnInView = await page.evaluate(() => {
    const turns = document.querySelectorAll("#log .turn.user");
    const box = turns[turns.length - 1].getBoundingClientRect();
    const footer = document.querySelector("footer").getBoundingClientRect();
    return box.top >= 0 && box.bottom <= footer.top;
  });
  await watchAnswer(page);
  const followGaps: number[] = [];
  for (let i = 0; i < 5; i++) {
    const length = await page.evaluate(() =>
      document.querySelector("#log .turn.assistant:last-child .text").textContent.length as number
    );
    await page.waitForFunction(
      (n) =>
        document.querySelector("#log .turn.assistant:last-child .text").textContent.length > n ||
        document.querySelector("#log .turn.assistant:last-child").dataset.state === "done",
      length + 80,
    );
    followGaps.push(await gap(page));
  }
  await lastState(page, "done");
  const atDone = {
    gap: await gap(page),
    ...(await page.evaluate(() => {
      const stats = document.querySelector("#log .turn.assistant:last-child .stats");
      const footer = document.querySelector("footer").getBoundingClientRect();
      return {
        statsAboveComposer: stats.getBoundingClientRect().bottom <= footer.top,
        pageTaller: document.documentElement.scrollHeight > innerHeight,
      };
    })),
  };
  const seen = await page.evaluate(() =>
    (globalThis as unknown as { seen: { removedOutsideOpen: number; committedAdds: number } }).seen
  );
  await page.screenshot({ path: new URL(`${view.name}.png`, SCREENSHOTS).pathname });

  const rendered = await page.evaluate(() => {
    const body = document.querySelector("#log .turn.assistant:last-child .text");
    const count = (css: string) => body.querySelectorAll(css).length as number;
    const pre = body.querySelector("pre");
    return {
      h1: count("h1"),
      h2: count("h2"),
      orderedItems: count("ol > li"),
      bulletItems: count("ul > li"),
      tableCells: count("table th, table td"),
      strong: count("strong"),
      codeBlocks: count("pre > code"),
      copyButtons: count(".code button.copy"),
      highlighted: count("pre code.hljs span[class^=hljs-]"),
      monospace: /mono|Menlo|Consolas/i.test(getComputedStyle(pre).fontFamily) as boolean,
      text: body.textContent as string,
    };
  });

  // The reader scrolls up while an answer streams: the page stays put and offers a way back.
  await send(page, "[fixture:markdown] once more");
  await page.waitForFunction(() =>
    document.querySelector("#log .turn.assistant:last-child .text").textContent.length > 200
  );
  await page.mouse.move(view.width / 2, view.height / 3);
  await page.mouse.wheel(0, -700);
  await page.waitForFunction(() => !document.getElementById("jump").hidden);
  const jumpVisible = await page.locator("#jump").isVisible();
  await page.screenshot({ path: new URL(`${view.name}-scrolled-up.png`, SCREENSHOTS).pathname });
  const top = await page.evaluate(() => document.documentElement.scrollTop as number);
  const length = await page.evaluate(() =>
    document.querySelector("#log .turn.assistant:last-child .text").textContent.length as number
  );
  await page.waitForFunction(
    (n) => document.querySelector("#log .turn.assistant:last-child .text").textContent.length > n,
    length + 150,
  );
  const stayed = await page.evaluate(
    (before) => Math.abs(document.documentElement.scrollTop - before) < 2,
    top,
  );
  await page.locator("#jump").click();
  await page.waitForFunction(() => document.getElementById("jump").hidden);
  const afterJumpGap = await gap(page);
  const jumpHidden = await page.locator("#jump").isHidden();
  await lastState(page, "done");

  // The Copy button puts the code block's text on the clipboard.
  await page.locator("#log .turn.assistant:last-child button.copy").first().click();
  await page.waitForFunction(() =>
    document.querySelector("#log .turn.assistant:last-child button.copy").textContent === "Copied"
  );
  const copied = await page.evaluate(() => navigator.clipboard.readText() as Promise<string>);
  const horizontalOverflow = await page.evaluate(() =>
    document.documentElement.scrollWidth > document.documentElement.clientWidth
  );

  return {
    name: view.name,
    background,
    newTurnInView,
    followGaps,
    atDone,
    rendered,
    removedOutsideOpen: seen.removedOutsideOpen,
    committedAdds: seen.committedAdds,
    scrolledUp: { jumpVisible, stayed, afterJumpGap, jumpHidden },
    copied,
    horizontalOverflow,
  };
}

async function hostile(page: Page): Promise<Report["hostile"]> {
  let dialogs = 0;
  page.on("dialog", (dialog) => {
    dialogs++;
    dialog.dismiss().catch(() => {});
  });
  await page.evaluate(() => {
    const violations: string[] = [];
    (globalThis as unknown as { violations: string[] }).violations = violations;
    document.addEventListener(
      "securitypolicyviolation",
      (e: { violatedDirective: string; blockedURI: string; sample: string }) => {
        violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`);
      },
    );
  });
  await page.getByRole("button", { name: "New chat" }).click();
  await send(page, "[fixture:hostile] try something");
  await lastState(page, "done");
  // Give anything that was scheduled (an image's onerror, an animation's onbegin) its chance.
  await page.locator("#log .turn.assistant:last-child a").first().click();
  await page.waitForTimeout(1500);
  return await page.evaluate(() => {
    const body = document.querySelector("#log .turn.assistant:last-child .text");
    const all = [...body.querySelectorAll("*")];
    return {
      pwned: (globalThis as unknown as { __pwned?: unknown }).__pwned ?? null,
      dialogs: 0,
      violations: (globalThis as unknown as { violations: string[] }).violations,
      scripts: body.querySelectorAll("script, iframe, object, embed").length as number,
      handlers: all.filter((el: { getAttributeNames(): string[] }) =>
        el.getAttributeNames().some((name) =>
          name.startsWith("on")
        )
      ).length,
      javascriptUrls: all.filter((el: { getAttribute(n: string): string | null }) =>
        ["href", "src", "action", "formaction", "xlink:href"].some((name) =>
          /^\s*javascript:/i.test(el.getAttribute(name) ?? "")
        )
      ).length,
      text: body.textContent as string,
    };
  }).then((result) => ({ ...result, dialogs }));
}

async function drive(origin: string): Promise<Report> {
  return await withBrowser(async (context) => {
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(20_000);
    await page.goto(origin);
    const views: ViewReport[] = [];
    for (const view of VIEWS) views.push(await oneView(page, view));
    return views;
  }).then(async (views) => ({
    views,
    // The page's CSP would block inline scripts and handlers by itself; with it bypassed, the
    // sanitizer alone must keep them out.
    hostile: await withBrowser(async (context) => {
      const page = context.pages()[0] ?? await context.newPage();
      page.setDefaultTimeout(20_000);
      await page.goto(origin);
      return await hostile(page);
    }, { bypassCSP: true }),
  }));
}

if (import.meta.main) {
  console.log(JSON.stringify(await drive(Deno.args[0])));
}

Deno.test("the page renders streamed markdown safely and follows it, on desktop and phone, light and dark", async (t) => {
  await Deno.mkdir(SCREENSHOTS, { recursive: true });
  const sluice = await startPageServer({ tokensPerSecond: 250 });
  try {
    const report = await runDriver<Report>(import.meta.url, [sluice.origin]);
    const code = /```python\n([\s\S]*?)```/.exec(MARKDOWN_ANSWER)![1];

    for (const view of report.views) {
      await t.step(`${view.name}: headings, lists, a table and highlighted code`, () => {
        const r = view.rendered;
        assert.equal(r.h1, 1);
        assert.equal(r.h2, 2);
        assert.equal(r.orderedItems, 3);
        assert.equal(r.bulletItems, 3);
        assert.equal(r.tableCells, 12);
        assert.ok(r.strong >= 4);
        assert.equal(r.codeBlocks, 2);
        assert.equal(r.copyButtons, 2);
        assert.ok(r.highlighted > 5, `${r.highlighted} highlighted tokens`);
        assert.equal(r.monospace, true);
        assert.ok(!r.text.includes("**") && !r.text.includes("```") && !r.text.includes("| ---"));
        assert.ok(folded(r.text).includes("That is the whole idea: small gates"));
      });

      await t.step(
        `${view.name}: completed blocks are rendered once, only the open one again`,
        () => {
          assert.equal(view.removedOutsideOpen, 0);
          assert.ok(view.committedAdds >= 5, `${view.committedAdds} blocks committed`);
        },
      );

      await t.step(
        `${view.name}: the view follows the answer and shows its end above the composer`,
        () => {
          assert.equal(view.newTurnInView, true);
          assert.equal(view.atDone.pageTaller, true);
          for (const g of view.followGaps) {
            assert.ok(g <= 24, `${g} px from the end while following`);
          }
          assert.ok(view.atDone.gap <= 24);
          assert.equal(view.atDone.statsAboveComposer, true);
          assert.equal(view.horizontalOverflow, false);
        },
      );

      await t.step(
        `${view.name}: scrolling up stops following; "Jump to latest" comes back`,
        () => {
          assert.deepEqual(view.scrolledUp, {
            jumpVisible: true,
            stayed: true,
            afterJumpGap: view.scrolledUp.afterJumpGap,
            jumpHidden: true,
          });
          assert.ok(view.scrolledUp.afterJumpGap <= 24);
        },
      );

      await t.step(`${view.name}: Copy puts the code on the clipboard`, () => {
        assert.equal(view.copied.trimEnd(), code.trimEnd());
      });
    }

    await t.step("light and dark follow the colour scheme", () => {
      const light = report.views.find((v) => v.name === "desktop-light")!.background;
      const dark = report.views.find((v) => v.name === "desktop-dark")!.background;
      const luminance = (rgb: string) =>
        rgb.match(/\d+/g)!.slice(0, 3).map(Number).reduce((a, b) => a + b);
      assert.ok(luminance(light) > 600, light);
      assert.ok(luminance(dark) < 150, dark);
    });

    await t.step(
      "hostile HTML in an answer is inert even without the CSP: no script, handler or javascript: URL runs",
      () => {
        assert.equal(report.hostile.pwned, null);
        assert.equal(report.hostile.dialogs, 0);
        assert.equal(report.hostile.scripts, 0);
        assert.equal(report.hostile.handlers, 0);
        assert.equal(report.hostile.javascriptUrls, 0);
        assert.deepEqual(report.hostile.violations, []); // none: the CSP is bypassed here
        assert.match(folded(report.hostile.text), /Here is a script: done\./);
        assert.match(report.hostile.text, /still text/);
        assert.ok(HOSTILE_ANSWER.includes("<script>"));
      },
    );
  } finally {
    await sluice.close();
  }
});
