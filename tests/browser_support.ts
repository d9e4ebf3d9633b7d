/**
 * What the browser tests share: a sluice on 127.0.0.1 answering from the project's fixtures plus
 * a few written for the clients (tests/answer_fixtures.ts), at a real (fast) pace; Debian's headless
 * Chromium through playwright-core; and the child process that drives it.
 *
 * The browser is driven from a child process (the test file itself, run with `deno run`):
 * playwright probes system files at load (`/proc/sys/fs/binfmt_misc/WSLInterop`) that Deno only
 * lets a program read with --allow-all, which the test suite does not have. The child does what
 * a user does and reports what the page showed; the test asserts on that report and on what
 * sluice saw. The child talks only to the sluice the test started; Chromium runs with its
 * background networking off.
 */
import type { BrowserContext } from "playwright-core";
import { createApp } from "../lib/app.ts";
import type { AppDeps } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { createReplayFetch } from "../lib/replay/replay.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { recordingUpstream, testConfig } from "./helpers.ts";
import { answerFixtures } from "./answer_fixtures.ts";
export { HOSTILE_ANSWER, MARKDOWN_ANSWER, NUMBERED_ANSWER } from "./answer_fixtures.ts";

/** Debian's Chromium (`apt-get install chromium`); the tests use no downloaded browser. */
export const CHROMIUM = "/usr/bin/chromium";
/** Where the browser tests write their screenshots (gitignored). */
export const SCREENSHOTS = new URL("./screenshots/", import.meta.url);

/** A sluice for the page: its app, the stats it recorded, the bodies sent upstream. */
export async function startPageServer(options: {
  env?: Record<string, string>;
  tokensPerSecond?: number;
  /** Wraps the app's fetch (to cut connections, say). */
  wrap?: (fetch: (request: Request) => Promise<Response>) => (r: Request) => Promise<Response>;
}) {
  const replay = createReplayFetch(await answerFixtures(), {
    pace: { ttftMs: 150, tokensPerSecond: options.tokensPerSecond ?? 120, speed: 1 },
  });
  const sent: { messages: { role: string; content: unknown }[] }[] = [];
  const kv = await Deno.openKv(":memory:");
  const stats = memorySink();
  const deps: AppDeps = {
    config: testConfig(options.env ?? {}),
    logger: silentLogger,
    stats,
    kv,
    upstream: recordingUpstream(replay, sent),
  };
  const app = createApp(deps);
  const fetch = async (request: Request) => await app.fetch(request);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    options.wrap ? options.wrap(fetch) : fetch,
  );
  return {
    app,
    stats,
    sent,
    origin: `http://127.0.0.1:${server.addr.port}`,
    async close() {
      await server.shutdown();
      kv.close();
    },
  };
}

/** Runs `file` as the browser driver with `args`; returns its JSON report. */
export async function runDriver<T>(file: string, args: string[]): Promise<T> {
  const child = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL(file).pathname, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(child.stderr);
  if (child.code !== 0) throw new Error(`the browser driver failed:\n${stderr}`);
  return JSON.parse(new TextDecoder().decode(child.stdout));
}

/** In the child: a fresh Chromium profile; closed (and removed) after `use`. */
export async function withBrowser<T>(
  use: (context: BrowserContext) => Promise<T>,
  options: { bypassCSP?: boolean } = {},
): Promise<T> {
  // Imported here, in the child only: loading playwright needs --allow-all (see the top).
  const { chromium } = await import("playwright-core");
  const profile = await Deno.makeTempDir({ prefix: "sluice-browser-" });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    bypassCSP: options.bypassCSP ?? false,
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
    return await use(context);
  } finally {
    await context.close();
    await Deno.remove(profile, { recursive: true });
  }
}

/** Whitespace folded to single spaces: rendered markdown's text against the answer's. */
export function folded(text: string): string {
  return text.replace(/\s+/g, " ").trim();
}
