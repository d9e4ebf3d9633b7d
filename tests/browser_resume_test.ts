/**
 * The page resumes an answer whose connection drops: in headless Chromium, sluice's responses
 * are cut mid-answer (the response body fails, so the server closes the socket and the browser
 * sees a network error), first the POST /chat and then the first GET /chat/streams/{id}. The
 * page shows "reconnecting", resumes with Last-Event-ID, and shows the whole answer exactly once.
 */
import assert from "node:assert/strict";
import {
  folded,
  NUMBERED_ANSWER,
  runDriver,
  SCREENSHOTS,
  startPageServer,
  withBrowser,
} from "./browser_support.ts";

// deno-lint-ignore no-explicit-any
type Dom = any;
declare const document: Dom, MutationObserver: Dom;

interface Report {
  states: string[];
  badges: string[];
  final: { state: string; text: string; meta: string };
  resumes: { url: string; lastEventId: string | null }[];
  conversationId: string | null;
}

async function drive(origin: string): Promise<Report> {
  return await withBrowser(async (context) => {
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(30_000);
    const resumes: Report["resumes"] = [];
    page.on("request", (request) => {
      if (
        request.method() === "GET" && new URL(request.url()).pathname.startsWith("/chat/streams/")
      ) {
        resumes.push({
          url: request.url(),
          lastEventId: request.headers()["last-event-id"] ?? null,
        });
      }
    });
    await page.goto(origin);
    await page.evaluate(() => {
      const seen = { states: [] as string[], badges: [] as string[] };
      (globalThis as unknown as { seen: typeof seen }).seen = seen;
      new MutationObserver(() => {
        const last = document.querySelector("#log .turn.assistant:last-child");
        if (!last) return;
        if (seen.states.at(-1) !== last.dataset.state) seen.states.push(last.dataset.state);
        const badge = last.querySelector(".badge").textContent;
        if (badge && seen.badges.at(-1) !== badge) seen.badges.push(badge);
      }).observe(document.getElementById("log"), {
        subtree: true,
        childList: true,
        characterData: true,
        attributes: true,
      });
    });
    const prompt = page.getByLabel("Message", { exact: true });
    await prompt.fill("[fixture:numbered] a long answer, please");
    await prompt.press("Enter");
    await page.waitForFunction(() =>
      document.querySelector("#log .turn.assistant:last-child")?.dataset.state === "reconnecting"
    );
    await page.screenshot({ path: new URL("reconnecting.png", SCREENSHOTS).pathname });
    await page.waitForFunction(() =>
      document.querySelector("#log .turn.assistant:last-child")?.dataset.state === "done"
    );
    await page.screenshot({ path: new URL("resumed.png", SCREENSHOTS).pathname });
    return await page.evaluate(() => {
      const last = document.querySelector("#log .turn.assistant:last-child");
      const seen = (globalThis as unknown as { seen: { states: string[]; badges: string[] } }).seen;
      return {
        ...seen,
        final: {
          state: last.dataset.state as string,
          text: last.querySelector(".text").textContent as string,
          meta: last.querySelector(".meta").textContent as string,
        },
        conversationId: localStorage.getItem("sluice.conversation"),
      };
    }).then((view) => ({ ...view, resumes }));
  });
}

if (import.meta.main) {
  console.log(JSON.stringify(await drive(Deno.args[0])));
}

/** The response with its body failing after about `bytes` bytes: a dropped connection. */
function cutAfter(response: Response, bytes: number): Response {
  let seen = 0;
  const body = response.body!.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (seen >= bytes) {
          controller.error(new Error("the test cut this connection"));
          return;
        }
        // Cut inside a chunk too: a resume may hand over the whole rest in one chunk.
        const part = chunk.subarray(0, bytes - seen);
        seen += part.length;
        controller.enqueue(part);
        if (seen >= bytes) controller.terminate(); // what came so far, then the end
      },
    }),
  );
  return new Response(body, { status: response.status, headers: response.headers });
}

Deno.test("the page reconnects after a dropped connection and shows the answer once", async (t) => {
  await Deno.mkdir(SCREENSHOTS, { recursive: true });
  const cuts = { chat: 1, resume: 1 };
  const sluice = await startPageServer({
    wrap: (fetch) => async (request) => {
      const path = new URL(request.url).pathname;
      const response = await fetch(request);
      if (request.method === "POST" && path === "/chat" && cuts.chat-- > 0) {
        return cutAfter(response, 1200);
      }
      if (request.method === "GET" && path.startsWith("/chat/streams/") && cuts.resume-- > 0) {
        return cutAfter(response, 800);
      }
      return response;
    },
  });
  try {
    const report = await runDriver<Report>(import.meta.url, [sluice.origin]);

    await t.step("the page says it is reconnecting, then streams again", () => {
      assert.ok(report.states.includes("reconnecting"), report.states.join(","));
      assert.ok(report.badges.some((badge) => /^reconnecting/.test(badge)));
      const afterReconnect = report.states.slice(report.states.indexOf("reconnecting"));
      assert.ok(afterReconnect.includes("streaming"));
      assert.equal(report.states.at(-1), "done");
    });

    await t.step("the whole answer is shown, each paragraph exactly once", () => {
      assert.equal(report.final.state, "done");
      assert.equal(folded(report.final.text), folded(NUMBERED_ANSWER));
      for (let i = 1; i <= 40; i++) {
        const count = report.final.text.split(`Paragraph ${i} of`).length - 1;
        assert.equal(count, 1, `paragraph ${i} shown ${count} times`);
      }
      assert.match(report.final.meta, /^TTFT \d+ ms/);
    });

    await t.step("each resume asked for the events after the last one shown", () => {
      assert.ok(report.resumes.length >= 2, `${report.resumes.length} resumes`);
      const ids = report.resumes.map((r) => Number(r.lastEventId));
      for (const id of ids) assert.ok(Number.isInteger(id) && id > 0, String(ids));
      assert.ok(ids[1] > ids[0], `Last-Event-ID ${ids[0]} then ${ids[1]}`);
    });

    await t.step("the server finished the answer once and stored it once", async () => {
      const chats = sluice.stats.records.filter((r) => r.endpoint === "/chat");
      assert.equal(chats.length, 1);
      assert.equal(chats[0].outcome, "ok");
      const stored = await (await sluice.app.request(`/conversations/${report.conversationId}`))
        .json();
      assert.equal(stored.messages.length, 2);
      assert.equal(stored.messages[1].content, NUMBERED_ANSWER);
    });
  } finally {
    await sluice.close();
  }
});
