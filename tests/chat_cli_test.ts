import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { createLifecycle } from "../lib/http/shutdown.ts";
import type { ChatDone } from "../lib/chat/encoding.ts";
import type { TerminalIO } from "../lib/cli/terminal/repl.ts";
import { runChat } from "../lib/cli/terminal/repl.ts";
import { streamChat } from "../lib/cli/terminal/client.ts";
import { createTerminalMarkdown } from "../lib/cli/terminal/markdown.ts";
import { createAnswerPrinter } from "../lib/cli/terminal/answer_printer.ts";
import {
  colorEnabled,
  DEFAULT_URL,
  isQuit,
  parseChatArgs,
  SPINNER_CLEAR,
  spinnerFrame,
  statsText,
  styles,
  UsageError,
} from "../lib/cli/terminal/terminal.ts";
import { silentLogger } from "../lib/log.ts";
import type { Pace } from "../lib/replay/pace.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { recordingUpstream, testConfig } from "./helpers.ts";
import { answerFixtures, MARKDOWN_ANSWER, NUMBERED_ANSWER } from "./answer_fixtures.ts";

const ROOT = new URL("..", import.meta.url).pathname;
// The deno running the tests, not whatever `deno` is on PATH: npm's `deno` is a Node.js wrapper
// that dies on Ctrl-C itself, which would end the pane whatever the client does.
const DENO = Deno.execPath();
const ESC = "\x1b";
// deno-lint-ignore no-control-regex -- an ANSI colour code starts with ESC
const SGR = /\x1b\[[0-9;]*m/;

/** A sluice on replay, with the upstream requests it made and its stats. */
async function sluice(pace: Pace, sleep?: (ms: number, signal?: AbortSignal) => Promise<void>) {
  const replay = createReplayFetch(await answerFixtures(), { pace, sleep });
  const sent: { messages: { role: string; content: unknown }[] }[] = [];
  const kv = await Deno.openKv(":memory:");
  const stats = memorySink();
  const lifecycle = createLifecycle();
  const app = createApp({
    config: testConfig(),
    logger: silentLogger,
    stats,
    kv,
    upstream: recordingUpstream(replay, sent),
    lifecycle,
  });
  // As a shutdown does: what the app still writes after the last response (a resumable stream's
  // last commit) is waited for before KV closes.
  const close = async () => {
    await lifecycle.settle(10_000);
    kv.close();
  };
  return { app, kv, stats, sent, close };
}

function done(overrides: Partial<ChatDone> = {}): ChatDone {
  return {
    request_id: "req_1",
    conversation_id: null,
    model: "m",
    stop_reason: "end_turn",
    usage: {
      input_tokens: 18,
      output_tokens: 54,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
    },
    ttft_ms: 612.4,
    total_ms: 1840,
    output_tokens_per_second: 31.2,
    cost_usd: null,
    ...overrides,
  };
}

Deno.test("the terminal client's pure parts", async (t) => {
  await t.step("arguments: --url and --key, with SLUICE_KEY and the local default", () => {
    assert.deepEqual(parseChatArgs([], {}), {
      url: DEFAULT_URL,
      key: undefined,
      model: undefined,
      system: undefined,
      help: false,
    });
    const parsed = parseChatArgs(["--url", "http://h:1", "--key", "k1", "--model", "m"], {
      SLUICE_KEY: "env-key",
    });
    assert.equal(parsed.url, "http://h:1");
    assert.equal(parsed.key, "k1");
    assert.equal(parsed.model, "m");
    assert.equal(parseChatArgs([], { SLUICE_KEY: "env-key" }).key, "env-key");
    assert.equal(parseChatArgs(["-h"], {}).help, true);
  });

  await t.step("bad arguments are usage errors that say what is wrong", () => {
    assert.throws(() => parseChatArgs(["--bogus"], {}), UsageError);
    assert.throws(() => parseChatArgs(["--url", "ftp://x"], {}), /--url must be an http/);
    assert.throws(() => parseChatArgs(["stray"], {}), UsageError);
  });

  await t.step("colour only on a terminal, and never with NO_COLOR or TERM=dumb", () => {
    assert.equal(colorEnabled(true, {}), true);
    assert.equal(colorEnabled(false, {}), false);
    assert.equal(colorEnabled(true, { NO_COLOR: "1" }), false);
    assert.equal(colorEnabled(true, { NO_COLOR: "" }), true);
    assert.equal(colorEnabled(true, { TERM: "dumb" }), false);
  });

  await t.step("styles wrap text in SGR codes only when colour is on", () => {
    const on = styles(true), off = styles(false);
    assert.match(on.answer("hi"), SGR);
    assert.ok(on.answer("hi").includes("hi"));
    assert.equal(off.answer("hi"), "hi");
    assert.equal(off.dim("x"), "x");
    assert.equal(on.dim(""), "");
  });

  await t.step("the stats line has TTFT, tokens, time and rate", () => {
    assert.equal(
      statsText(done()),
      "612 ms to first token · 18 in / 54 out tokens · 1840 ms · 31 tok/s",
    );
    assert.equal(
      statsText(done({ stop_reason: "max_tokens", output_tokens_per_second: null })),
      "612 ms to first token · 18 in / 54 out tokens · 1840 ms · max_tokens",
    );
    // 18 × $2 + 54 × $10 per Mtok (claude-sonnet-5-5) = $0.000576.
    assert.equal(
      statsText(done({ cost_usd: 0.000576 })),
      "612 ms to first token · 18 in / 54 out tokens · 1840 ms · 31 tok/s · $0.000576",
    );
  });

  await t.step("spinner frames draw in place and differ from one to the next", () => {
    assert.notEqual(spinnerFrame(0), spinnerFrame(1));
    assert.ok(spinnerFrame(3).endsWith("\b"));
    assert.equal(SPINNER_CLEAR, " \b");
  });

  await t.step("quit, exit and :q leave, anything else is a message", () => {
    for (const word of ["quit", "EXIT", " quit ", ":q"]) assert.equal(isQuit(word), true);
    for (const word of ["quite", "please quit", ""]) assert.equal(isQuit(word), false);
  });
});

const WAITING = "\u0000waiting";

/** The response with its body failing after about `bytes` bytes: a dropped connection. */
function cutAfter(response: Response, bytes: number): Response {
  let seen = 0;
  return new Response(
    response.body!.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          if (seen >= bytes) return controller.error(new TypeError("connection reset"));
          // Cut inside a chunk too: a resume may hand over the whole rest in one chunk.
          const part = chunk.subarray(0, bytes - seen);
          seen += part.length;
          controller.enqueue(part);
          if (seen >= bytes) controller.terminate(); // what came so far, then the end
        },
      }),
    ),
    { status: response.status, headers: response.headers },
  );
}

/** A fetch into `app` whose first POST /chat is cut after `bytes` bytes. */
function cuttingFetch(app: { fetch: (r: Request) => Response | Promise<Response> }, bytes: number) {
  let cut = false;
  return async (request: Request) => {
    const response = await app.fetch(request);
    if (!cut && request.method === "POST" && new URL(request.url).pathname === "/chat") {
      cut = true;
      return cutAfter(response, bytes);
    }
    return response;
  };
}

/** The lines of MARKDOWN_ANSWER's code blocks, trimmed: code keeps its length in a terminal. */
const CODE_LINES = new Set(
  [...MARKDOWN_ANSWER.matchAll(/```\w*\n([\s\S]*?)```/g)].flatMap((m) =>
    m[1].split("\n").map((line) => line.trim())
  ),
);

/** A scripted terminal: lines to type, what was written, and a Ctrl-C button. */
function scriptedIO(lines: (string | null)[], onWrite: (all: string) => void = () => {}) {
  let output = "";
  let interrupt: (() => void) | null = null;
  const io: TerminalIO = {
    readLine: () => {
      const line = lines.length ? lines.shift()! : null;
      // WAITING: the user types nothing (the read stays pending).
      return line === WAITING ? new Promise(() => {}) : Promise.resolve(line);
    },
    write(text) {
      output += text;
      onWrite(output);
    },
    onInterrupt(handler) {
      interrupt = handler;
      return () => (interrupt = null);
    },
  };
  return {
    io,
    output: () => output,
    pressCtrlC: () => interrupt?.(),
    listening: () => interrupt !== null,
  };
}

/** A replay sleep that ends only on abort: answers stall after their first delta. */
function stallingSleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((_, reject) => {
    if (signal?.aborted) reject(signal.reason);
    signal?.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
}

Deno.test("runChat streams answers, keeps the conversation and leaves on Ctrl-D", async () => {
  const { app, sent, close } = await sluice({ ttftMs: 0, tokensPerSecond: 1e9, speed: 0 });
  try {
    const term = scriptedIO(["write a three word story", "", "another three word one", null]);
    const code = await runChat({
      url: "http://sluice.test",
      io: term.io,
      color: false,
      spinner: false,
      fetch: (input, init) => Promise.resolve(app.fetch(new Request(input, init))),
    });
    assert.equal(code, 0);
    const out = term.output();
    assert.equal(out.split("Claude:\nRain taps softly.\n").length, 3);
    assert.match(out, /to first token · 24 in \/ 6 out tokens/);
    assert.ok(out.endsWith("You: \nGoodbye!\n"));
    assert.equal(out.includes(ESC), false);
    assert.equal(term.listening(), false);
    // The second request carried the first exchange: the conversation is kept on the server.
    assert.equal(sent.length, 2);
    assert.deepEqual(sent[1].messages.map((m) => m.role), ["user", "assistant", "user"]);
    assert.equal(sent[1].messages[1].content, "Rain taps softly.");
  } finally {
    await close();
  }
});

Deno.test("runChat: Ctrl-C stops the answer and the upstream, and the chat goes on", async (t) => {
  const { app, sent, stats, close } = await sluice(
    { ttftMs: 0, tokensPerSecond: 1, speed: 1 },
    stallingSleep,
  );
  try {
    let pressed = false;
    const term = scriptedIO(["Tell me about sluice", "quit"], (all) => {
      // Press Ctrl-C once the first words of the answer are on screen (the spinner is erased
      // when they arrive).
      if (!pressed && all.includes(SPINNER_CLEAR)) {
        pressed = true;
        queueMicrotask(() => term.pressCtrlC());
      }
    });
    const code = await runChat({
      url: "http://sluice.test",
      io: term.io,
      color: true,
      spinner: true,
      spinnerMs: 60_000,
      fetch: (input, init) => Promise.resolve(app.fetch(new Request(input, init))),
    });
    const out = term.output();

    await t.step("the answer is marked stopped, then the prompt returns", () => {
      assert.equal(code, 0);
      assert.match(out, /\[stopped\]/);
      assert.ok(out.indexOf("[stopped]") < out.lastIndexOf("You:"));
      assert.match(out, /Goodbye!\n$/);
    });

    await t.step("a spinner showed until the first token, then was erased", () => {
      const claude = out.indexOf("Claude:");
      assert.ok(out.indexOf(spinnerFrame(0), claude) > claude);
      assert.ok(out.indexOf(SPINNER_CLEAR, claude) > out.indexOf(spinnerFrame(0), claude));
    });

    await t.step("in colour", () => assert.match(out, SGR));

    await t.step("the upstream request was aborted", async () => {
      assert.equal(sent.length, 1);
      for (let i = 0; i < 200 && stats.records.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 5));
      }
      assert.equal(stats.records[0]?.outcome, "client_aborted");
    });
  } finally {
    await close();
  }
});

Deno.test("runChat at the prompt: one Ctrl-C explains, a second leaves, a doubled signal counts once", async () => {
  const { app, close } = await sluice({ ttftMs: 0, tokensPerSecond: 1e9, speed: 0 });
  try {
    let now = 0;
    const term = scriptedIO([WAITING]);
    const running = runChat({
      url: "http://sluice.test",
      io: term.io,
      color: false,
      spinner: false,
      now: () => now,
      fetch: (input, init) => Promise.resolve(app.fetch(new Request(input, init))),
    });
    while (!term.output().endsWith("You: ")) await new Promise((r) => setTimeout(r, 1));
    term.pressCtrlC();
    term.pressCtrlC(); // the same press, forwarded again by `deno task`
    assert.equal(count(term.output(), "(Ctrl-C again, quit or Ctrl-D to leave)"), 1);
    now += 1_000;
    term.pressCtrlC();
    assert.equal(await running, 0);
    assert.match(term.output(), /Goodbye!\n$/);
  } finally {
    await close();
  }
});

Deno.test("runChat says so and exits 1 when sluice cannot be reached", async () => {
  const term = scriptedIO([]);
  const code = await runChat({
    url: "http://sluice.test",
    io: term.io,
    color: false,
    spinner: false,
    fetch: () => Promise.reject(new TypeError("connection refused")),
  });
  assert.equal(code, 1);
  assert.match(term.output(), /cannot start a conversation at http:\/\/sluice.test/);
});

Deno.test("runChat: a Ctrl-C forwarded again after the stop prints no stray prompt", async () => {
  const { app, close } = await sluice({ ttftMs: 0, tokensPerSecond: 1, speed: 1 }, stallingSleep);
  try {
    let now = 0;
    let pressed = false;
    const term = scriptedIO(["Tell me about sluice", WAITING], (all) => {
      if (!pressed && all.includes("Claude:\n")) {
        pressed = true;
        queueMicrotask(() => term.pressCtrlC());
      }
    });
    const running = runChat({
      url: "http://sluice.test",
      io: term.io,
      color: false,
      spinner: false,
      now: () => now,
      fetch: (input, init) => Promise.resolve(app.fetch(new Request(input, init))),
    });
    while (!term.output().includes("[stopped]\n\nYou: ")) {
      await new Promise((r) => setTimeout(r, 1));
    }
    now += 600; // `deno task`'s copy of the same press, late
    term.pressCtrlC();
    assert.equal(count(term.output(), "You:"), 2);
    assert.equal(term.output().includes("Ctrl-C again"), false);
    now += 1_000; // a real press at the prompt
    term.pressCtrlC();
    assert.equal(count(term.output(), "(Ctrl-C again, quit or Ctrl-D to leave)"), 1);
    term.pressCtrlC();
    now += 300;
    term.pressCtrlC();
    assert.equal(await running, 0);
  } finally {
    await close();
  }
});

Deno.test("the answer printer writes each markdown block once, complete, when not live", () => {
  const markdown = createTerminalMarkdown({ color: false, width: 60 });
  let out = "";
  const printer = createAnswerPrinter({
    write: (text) => (out += text),
    markdown,
    live: false,
    columns: 60,
    rows: 24,
  });
  const pieces = MARKDOWN_ANSWER.match(/\s*\S+\s*/g)!;
  const seen: string[] = [];
  for (const piece of pieces) {
    printer.append(piece);
    seen.push(out);
  }
  printer.end();
  const whole = markdown.render(markdown.lex(MARKDOWN_ANSWER)).replace(/\n+$/, "") + "\n";
  assert.equal(out, whole);
  // Written in several steps, each one a prefix of the whole: nothing written was taken back.
  assert.ok(new Set(seen).size >= 8, `${new Set(seen).size} steps`);
  for (const step of seen) assert.ok(whole.startsWith(step));
  assert.equal(out.includes("\x1b"), false);
  // Code keeps its long lines (a terminal wraps them); everything else fits.
  for (const line of out.split("\n").filter((l) => !CODE_LINES.has(l.trim()))) {
    assert.ok(line.length <= 60, line);
  }
  assert.match(out, /^# Sluices, locks and weirs\n/);
  assert.match(out, /\n {2}\* Sluice gate: a sliding gate in a channel\.\n/);
  assert.match(out, /\n {2}def sluice_flow\(width_m: float/);
  assert.equal(/\*\*|```/.test(out), false);
});

Deno.test("streamChat resumes a dropped answer from Last-Event-ID and hands each piece over once", async (t) => {
  const { app, stats, close } = await sluice({ ttftMs: 0, tokensPerSecond: 2000, speed: 1 });
  try {
    const cuts = { chat: 1, resume: 1 };
    const resumedAfter: string[] = [];
    const fetch = async (input: RequestInfo | URL, init?: RequestInit) => {
      const request = new Request(input, init);
      const path = new URL(request.url).pathname;
      const response = await app.fetch(request);
      if (request.method === "POST" && path === "/chat" && cuts.chat-- > 0) {
        return cutAfter(response, 900);
      }
      if (request.method === "GET" && path.startsWith("/chat/streams/")) {
        resumedAfter.push(request.headers.get("last-event-id") ?? "");
        if (cuts.resume-- > 0) return cutAfter(response, 700);
      }
      return response;
    };
    const texts: string[] = [];
    const reconnects: number[] = [];
    const done = await streamChat({ url: "http://sluice.test", fetch }, {
      message: "[fixture:numbered] please",
    }, {
      onText: (text) => texts.push(text),
      onReconnecting: (attempt) => reconnects.push(attempt),
      pause: () => Promise.resolve(),
    });

    await t.step("the text is the whole answer, once", () => {
      assert.equal(texts.join(""), NUMBERED_ANSWER);
      assert.equal(done.stop_reason, "end_turn");
    });

    await t.step("it reconnected twice, each time after the last event it had", () => {
      assert.equal(resumedAfter.length, 2);
      const [first, second] = resumedAfter.map(Number);
      assert.ok(first > 0 && second > first, resumedAfter.join(","));
      assert.deepEqual(reconnects, [1, 0, 1, 0]);
    });

    await t.step("the server finished the answer once", () => {
      const chats = stats.records.filter((r) => r.endpoint === "/chat");
      assert.equal(chats.length, 1);
      assert.equal(chats[0].outcome, "ok");
    });
  } finally {
    await close();
  }
});

Deno.test("runChat in a terminal shows that it is reconnecting, then the rest of the answer", async () => {
  const { app, stats, close } = await sluice({ ttftMs: 0, tokensPerSecond: 2000, speed: 1 });
  try {
    const cut = cuttingFetch(app, 1500);
    const term = scriptedIO(["[fixture:numbered] please", null]);
    const code = await runChat({
      url: "http://sluice.test",
      io: term.io,
      color: false,
      spinner: false,
      live: true,
      size: () => ({ columns: 80, rows: 200 }),
      fetch: (input, init) => cut(new Request(input, init)),
    });
    assert.equal(code, 0);
    const out = term.output();
    assert.match(out, /\(connection lost; reconnecting, try 1…\)/);
    assert.match(
      out,
      /Paragraph 40 of the resumed answer says its number once\.\n.*to first token/,
    );
    assert.equal(stats.records.filter((r) => r.endpoint === "/chat").length, 1);
  } finally {
    await close();
  }
});

// ---- end to end: `deno task chat` in a real pseudo-terminal (tmux) against a served sluice ----

/** A tmux server of our own (its own socket), running one command in a pane. */
async function tmux(...args: string[]): Promise<string> {
  const output = await new Deno.Command("tmux", { args, stdout: "piped", stderr: "piped" })
    .output();
  if (!output.success) {
    throw new Error(`tmux ${args.join(" ")}: ${new TextDecoder().decode(output.stderr)}`);
  }
  return new TextDecoder().decode(output.stdout);
}

async function startPane(
  env: Record<string, string>,
  command: string,
  columns = 120,
  rows = 50,
) {
  const socket = `sluice-chat-test-${crypto.randomUUID().slice(0, 8)}`;
  const envArgs = Object.entries(env).flatMap(([k, v]) => ["-e", `${k}=${v}`]);
  await tmux(
    "-L",
    socket,
    "-f",
    "/dev/null",
    "new-session",
    "-d",
    "-s",
    "chat",
    "-x",
    String(columns),
    "-y",
    String(rows),
    "-c",
    ROOT,
    ...envArgs,
    // The shell reports how the command ended, on the screen that remain-on-exit keeps.
    `${command}; echo "[exit status $?]"`,
    ";",
    "set-option",
    "-t",
    "chat",
    "remain-on-exit",
    "on",
  );
  const pane = {
    /** The screen; with `history`, the lines scrolled off it too. */
    capture: (escapes = false, history = false) =>
      tmux(
        "-L",
        socket,
        "capture-pane",
        "-p",
        "-J",
        ...(escapes ? ["-e"] : []),
        ...(history ? ["-S", "-"] : []),
        "-t",
        "chat",
      ),
    type: async (text: string) => {
      await tmux("-L", socket, "send-keys", "-t", "chat", "-l", text);
      await tmux("-L", socket, "send-keys", "-t", "chat", "Enter");
    },
    key: (key: string) => tmux("-L", socket, "send-keys", "-t", "chat", key),
    /** True once the command has ended. */
    dead: async () =>
      (await tmux("-L", socket, "display", "-p", "-t", "chat", "#{pane_dead}")).trim() === "1",
    /** Waits (bounded) until the screen satisfies `predicate`; returns the screen. */
    async waitFor(predicate: (screen: string) => boolean, what: string): Promise<string> {
      let screen = "";
      for (let i = 0; i < 600; i++) {
        screen = await pane.capture();
        if (predicate(screen)) return screen;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`timed out waiting for ${what}; screen:\n${screen}`);
    },
    close: () => tmux("-L", socket, "kill-server").catch(() => ""),
  };
  return pane;
}

function count(haystack: string, needle: string): number {
  return haystack.split(needle).length - 1;
}

Deno.test("deno task chat in a terminal: colour, streaming, Ctrl-C, history, quit", async (t) => {
  // A real pace, so answers take a while and Ctrl-C lands mid-answer.
  const { app, sent, stats, close } = await sluice({ ttftMs: 300, tokensPerSecond: 30, speed: 1 });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const pane = await startPane(
    { NO_COLOR: "", SLUICE_KEY: "" },
    `${DENO} task chat --url http://127.0.0.1:${server.addr.port}`,
  );
  try {
    await t.step("it greets and prompts", async () => {
      await pane.waitFor((s) => s.includes("You:"), "the prompt");
    });

    await t.step("an answer streams in colour, then a dim stats line", async () => {
      await pane.type("write a three word story");
      const screen = await pane.waitFor((s) => s.includes("to first token"), "the stats line");
      // (The spinner's erased cells may stay in the capture as trailing blanks.)
      assert.match(
        screen,
        /Claude: *\nRain taps softly\.\n.*to first token · 24 in \/ 6 out tokens/,
      );
      const colours = await pane.capture(true);
      assert.match(colours, SGR);
    });

    await t.step("Ctrl-C stops a long answer without leaving", async () => {
      await pane.type("write an essay");
      await pane.waitFor(
        (s) => /Claude: *\n\S+ \S+/.test(s.split("write an essay")[1] ?? ""),
        "text",
      );
      await pane.key("C-c");
      const screen = await pane.waitFor(
        (s) => s.includes("[stopped]") && s.trimEnd().endsWith("You:"),
        "the stop and a new prompt",
      );
      assert.equal(count(screen, "to first token"), 1);
      // No stray prompt under [stopped]: the two sent messages and the new, empty one.
      assert.equal(count(screen, "You:"), 3, screen);
      assert.match(screen.trimEnd(), /\[stopped\]\n\nYou:$/);
      // One key press is one interrupt, though `deno task` forwards the signal a second time.
      assert.equal(screen.includes("Ctrl-C again"), false, screen);
      assert.equal(await pane.dead(), false);
      for (let i = 0; i < 200 && stats.records.length < 2; i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(stats.records[1]?.outcome, "client_aborted");
    });

    await t.step("the next message continues the conversation", async () => {
      await pane.type("one more three word story");
      await pane.waitFor((s) => count(s, "to first token") === 2, "the second stats line");
      // The stopped essay is not part of the history; the first exchange is.
      assert.deepEqual(sent.at(-1)!.messages.map((m) => m.content), [
        "write a three word story",
        "Rain taps softly.",
        "one more three word story",
      ]);
    });

    await t.step("quit says goodbye and exits with status 0", async () => {
      await pane.type("quit");
      await pane.waitFor((s) => s.includes("Goodbye!"), "goodbye");
      await pane.waitFor((s) => s.includes("Goodbye!\n[exit status 0]"), "the exit status");
    });
  } finally {
    await pane.close();
    await server.shutdown();
    await close();
  }
});

Deno.test("deno task chat renders a long markdown answer, wrapped at word boundaries", async (t) => {
  const { app, close } = await sluice({ ttftMs: 100, tokensPerSecond: 400, speed: 1 });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const columns = 60;
  const pane = await startPane(
    { NO_COLOR: "" },
    `${DENO} task chat --url http://127.0.0.1:${server.addr.port}`,
    columns,
  );
  try {
    await pane.waitFor((s) => s.includes("You:"), "the prompt");
    await pane.type("[fixture:markdown] sluices");
    await pane.waitFor((s) => s.includes("to first token"), "the stats line");
    const screen = await pane.capture(false, true);
    const answer = screen.slice(screen.indexOf("Claude:"), screen.indexOf("to first token"));
    const lines = answer.split("\n");

    await t.step(
      "no line but code is longer than the terminal (capture joins wrapped rows)",
      () => {
        for (const line of lines.filter((l) => !CODE_LINES.has(l.trim()))) {
          assert.ok(line.length <= columns, `${line.length}: ${line}`);
        }
      },
    );

    await t.step("words are whole: wrapping breaks lines between words, never inside one", () => {
      const words = new Set(answer.split(/\s+/));
      const paragraph = MARKDOWN_ANSWER.split("\n\n")[1].replace(/[*`]/g, "").split(/\s+/);
      for (const word of paragraph) assert.ok(words.has(word), `"${word}" is not whole`);
    });

    await t.step(
      "headings, bold, lists and the code block are rendered, not shown raw",
      async () => {
        assert.match(answer, /\nSluices, locks and weirs\n/);
        assert.match(answer, /\n {2}1\. The boat enters the chamber/);
        assert.match(answer, /\n {2}\* Weir: a low dam that water flows over\./);
        assert.match(answer, /\n {2}def sluice_flow\(width_m: float, opening_m: float,/);
        assert.match(answer, /\n {6}discharge_coefficient = 0\.61\n/);
        assert.equal(/\*\*|```|^#/m.test(answer), false, answer);
        const colours = await pane.capture(true, true);
        // deno-lint-ignore no-control-regex -- a bold heading (an SGR code starts with ESC)
        assert.match(colours, /\x1b\[1(;\d+)*m[^\n]*Sluices, locks and weirs/);
      },
    );
  } finally {
    await pane.close();
    await server.shutdown();
    await close();
  }
});

Deno.test("deno task chat resumes an answer whose connection drops and shows it once", async () => {
  const { app, close } = await sluice({ ttftMs: 100, tokensPerSecond: 300, speed: 1 });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    cuttingFetch(app, 1500),
  );
  const pane = await startPane(
    { NO_COLOR: "" },
    `${DENO} task chat --url http://127.0.0.1:${server.addr.port}`,
    80,
  );
  try {
    await pane.waitFor((s) => s.includes("You:"), "the prompt");
    await pane.type("[fixture:numbered] a long one");
    await pane.waitFor((s) => s.includes("to first token"), "the stats line");
    const screen = await pane.capture(false, true);
    for (let i = 1; i <= 40; i++) {
      assert.equal(count(screen, `Paragraph ${i} of`), 1, `paragraph ${i}:\n${screen}`);
    }
    assert.equal(screen.includes("reconnecting"), false); // the status line went away
  } finally {
    await pane.close();
    await server.shutdown();
    await close();
  }
});

Deno.test("deno task chat streams a block taller than the screen without repeating its lines", async () => {
  const { app, close } = await sluice({ ttftMs: 100, tokensPerSecond: 300, speed: 1 });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  // 8 rows: the 8-line code block cannot be redrawn in place, so its rows are appended.
  const pane = await startPane(
    { NO_COLOR: "" },
    `${DENO} task chat --url http://127.0.0.1:${server.addr.port}`,
    100,
    8,
  );
  try {
    await pane.waitFor((s) => s.includes("You:"), "the prompt");
    await pane.type("[fixture:markdown] sluices");
    await pane.waitFor((s) => s.includes("to first token"), "the stats line");
    const screen = await pane.capture(false, true);
    for (const line of CODE_LINES) {
      if (line === "") continue;
      assert.equal(count(screen, line), 1, `${line}:\n${screen}`);
    }
    // A table taller than the screen is shown once complete (its columns widen as rows come).
    for (const row of ["│ Sluice    │ no          │ 1-3 m", "│ Lock      │ yes         │ 2-25 m"]) {
      assert.equal(count(screen, row), 1, `${row}:\n${screen}`);
    }
    for (const heading of ["Sluices, locks and weirs", "How a lock works", "Computing the flow"]) {
      assert.equal(count(screen, `${heading}\n`), 1, heading);
    }
  } finally {
    await pane.close();
    await server.shutdown();
    await close();
  }
});

Deno.test("deno task chat with NO_COLOR: no colour codes, and Ctrl-D leaves", async () => {
  const { app, close } = await sluice({ ttftMs: 0, tokensPerSecond: 1e9, speed: 0 });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const pane = await startPane(
    { NO_COLOR: "1" },
    `${DENO} task chat --url http://127.0.0.1:${server.addr.port}`,
  );
  try {
    await pane.waitFor((s) => s.includes("You:"), "the prompt");
    await pane.type("three word story please");
    await pane.waitFor((s) => s.includes("to first token"), "the answer");
    const colours = await pane.capture(true);
    assert.equal(SGR.test(colours), false, colours);
    await pane.key("C-c");
    await pane.waitFor((s) => s.includes("(Ctrl-C again, quit or Ctrl-D to leave)"), "the hint");
    assert.equal(await pane.dead(), false);
    await pane.key("C-d");
    await pane.waitFor((s) => s.includes("Goodbye!\n[exit status 0]"), "goodbye and status 0");
  } finally {
    await pane.close();
    await server.shutdown();
    await close();
  }
});

Deno.test("the chat command with piped output writes no colour and ends at end of input", async () => {
  const { app, close } = await sluice({ ttftMs: 0, tokensPerSecond: 1e9, speed: 0 });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        "--allow-env",
        "lib/cli/chat.ts",
        "--url",
        `http://127.0.0.1:${server.addr.port}`,
      ],
      cwd: ROOT,
      env: { NO_COLOR: "" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode("a three word story\n"));
    await writer.close();
    const { code, stdout } = await child.output();
    const out = new TextDecoder().decode(stdout);
    assert.equal(code, 0);
    assert.match(out, /Claude:\nRain taps softly\.\n/);
    assert.match(out, /Goodbye!\n$/);
    assert.equal(out.includes(ESC), false);
    assert.equal(out.includes("\b"), false);
  } finally {
    await server.shutdown();
    await close();
  }
});
