import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import type { ChatDone } from "../lib/chat/encoding.ts";
import type { TerminalIO } from "../lib/cli/terminal/repl.ts";
import { runChat } from "../lib/cli/terminal/repl.ts";
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
import { createUpstream } from "../lib/proxy/upstream.ts";
import { projectFixtures, testConfig } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
// The deno running the tests, not whatever `deno` is on PATH: npm's `deno` is a Node.js wrapper
// that dies on Ctrl-C itself, which would end the pane whatever the client does.
const DENO = Deno.execPath();
const ESC = "\x1b";
// deno-lint-ignore no-control-regex -- an ANSI colour code starts with ESC
const SGR = /\x1b\[[0-9;]*m/;

/** A sluice on replay, with the upstream requests it made and its stats. */
async function sluice(pace: Pace, sleep?: (ms: number, signal?: AbortSignal) => Promise<void>) {
  const replay = createReplayFetch(await projectFixtures(), { pace, sleep });
  const sent: { messages: { role: string; content: unknown }[] }[] = [];
  const kv = await Deno.openKv(":memory:");
  const stats = memorySink();
  const app = createApp({
    config: testConfig(),
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
  return { app, kv, stats, sent };
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
  const { app, kv, sent } = await sluice({ ttftMs: 0, tokensPerSecond: 1e9, speed: 0 });
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
    assert.equal(out.split("Claude: Rain taps softly.\n").length, 3);
    assert.match(out, /to first token · 24 in \/ 6 out tokens/);
    assert.ok(out.endsWith("You: \nGoodbye!\n"));
    assert.equal(out.includes(ESC), false);
    assert.equal(term.listening(), false);
    // The second request carried the first exchange: the conversation is kept on the server.
    assert.equal(sent.length, 2);
    assert.deepEqual(sent[1].messages.map((m) => m.role), ["user", "assistant", "user"]);
    assert.equal(sent[1].messages[1].content, "Rain taps softly.");
  } finally {
    kv.close();
  }
});

Deno.test("runChat: Ctrl-C stops the answer and the upstream, and the chat goes on", async (t) => {
  const { app, kv, sent, stats } = await sluice(
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
    kv.close();
  }
});

Deno.test("runChat at the prompt: one Ctrl-C explains, a second leaves, a doubled signal counts once", async () => {
  const { app, kv } = await sluice({ ttftMs: 0, tokensPerSecond: 1e9, speed: 0 });
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
    kv.close();
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

async function startPane(env: Record<string, string>, command: string) {
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
    "120",
    "-y",
    "50",
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
    capture: (escapes = false) =>
      tmux("-L", socket, "capture-pane", "-p", "-J", ...(escapes ? ["-e"] : []), "-t", "chat"),
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
  const { app, kv, sent, stats } = await sluice({ ttftMs: 300, tokensPerSecond: 30, speed: 1 });
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
      assert.match(screen, /Claude: Rain taps softly\.\n.*to first token · 24 in \/ 6 out tokens/);
      const colours = await pane.capture(true);
      assert.match(colours, SGR);
    });

    await t.step("Ctrl-C stops a long answer without leaving", async () => {
      await pane.type("write an essay");
      await pane.waitFor((s) => /Claude: \S+ \S+/.test(s.split("write an essay")[1] ?? ""), "text");
      await pane.key("C-c");
      const screen = await pane.waitFor(
        (s) => s.includes("[stopped]") && s.trimEnd().endsWith("You:"),
        "the stop and a new prompt",
      );
      assert.equal(count(screen, "to first token"), 1);
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
    kv.close();
  }
});

Deno.test("deno task chat with NO_COLOR: no colour codes, and Ctrl-D leaves", async () => {
  const { app, kv } = await sluice({ ttftMs: 0, tokensPerSecond: 1e9, speed: 0 });
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
    kv.close();
  }
});

Deno.test("the chat command with piped output writes no colour and ends at end of input", async () => {
  const { app, kv } = await sluice({ ttftMs: 0, tokensPerSecond: 1e9, speed: 0 });
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
    assert.match(out, /Claude: Rain taps softly\.\n/);
    assert.match(out, /Goodbye!\n$/);
    assert.equal(out.includes(ESC), false);
    assert.equal(out.includes("\b"), false);
  } finally {
    await server.shutdown();
    kv.close();
  }
});
