/**
 * What the browser tests share: a sluice on 127.0.0.1 answering from the project's fixtures plus
 * a few written for the page (markdown, hostile HTML), at a real (fast) pace; Debian's headless
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
import { createReplayFetch, synthesizeStream } from "../lib/replay/replay.ts";
import type { FixtureSet } from "../lib/replay/replay.ts";
import { memorySink } from "../lib/stats/request_summary.ts";
import { createUpstream } from "../lib/proxy/upstream.ts";
import { projectFixtures, testConfig } from "./helpers.ts";

/** Debian's Chromium (`apt-get install chromium`); the tests use no downloaded browser. */
export const CHROMIUM = "/usr/bin/chromium";
/** Where the browser tests write their screenshots (gitignored). */
export const SCREENSHOTS = new URL("./screenshots/", import.meta.url);

/** A long answer with every block the page renders: headings, lists, a table, code. */
export const MARKDOWN_ANSWER = `# Sluices, locks and weirs

A **sluice** is a gate that controls how much water flows through a channel. Engineers use
them for irrigation, flood control and *navigation*; \`sluice\` is also this gateway's name.

## How a lock works

1. The boat enters the chamber and the lower gate closes.
2. The upper **sluice** opens and water fills the chamber.
3. When the levels match, the upper gate opens and the boat moves on.

Three kinds of structure:

- **Sluice gate**: a sliding gate in a channel.
- **Weir**: a low dam that water flows over.
- **Lock**: a chamber with gates at both ends.

| Structure | Moves boats | Typical height |
| --------- | ----------- | -------------- |
| Sluice    | no          | 1-3 m          |
| Weir      | no          | 0.5-5 m        |
| Lock      | yes         | 2-25 m         |

## Computing the flow

The flow under a sluice gate follows from Bernoulli's equation. In Python:

\`\`\`python
import math

def sluice_flow(width_m: float, opening_m: float, head_m: float) -> float:
    """Flow in cubic metres per second under a sluice gate."""
    discharge_coefficient = 0.61
    return discharge_coefficient * width_m * opening_m * math.sqrt(2 * 9.81 * head_m)

print(f"{sluice_flow(2.0, 0.5, 3.0):.2f} m3/s")
\`\`\`

And the same check from a shell:

\`\`\`bash
for head in 1 2 3; do
  echo "head=$head m"
done
\`\`\`

> A gate opened too fast can scour the channel bed below it.

That is the whole idea: small gates, controlled flow, and boats that climb hills of water.
`;

/** Model output that tries to run code in the page: none of it may execute. */
export const HOSTILE_ANSWER =
  `Here is a script: <script>window.__pwned = (window.__pwned || 0) + 1</script> done.

<img src="/nothing.png" onerror="window.__pwned = (window.__pwned || 0) + 1">

[a javascript link](javascript:window.__pwned=1) and <a href="javascript:window.__pwned=1">a raw one</a>.

<svg><animate onbegin="window.__pwned=1" attributeName="x" dur="1s"></animate></svg>

<iframe src="javascript:window.__pwned=1"></iframe><form action="javascript:window.__pwned=1"><button>go</button></form>

<p style="background:url(javascript:window.__pwned=1)" onclick="window.__pwned=1">still text</p>
`;

/** Forty numbered paragraphs: a dropped and resumed answer must show each exactly once. */
export const NUMBERED_ANSWER = Array.from(
  { length: 40 },
  (_, i) => `Paragraph ${i + 1} of the resumed answer says its number once.`,
).join("\n\n");

/** The project's fixtures plus the page's: markdown, hostile and numbered (ask `[fixture:NAME]`). */
export async function pageFixtures(): Promise<FixtureSet> {
  const base = await projectFixtures();
  const fixtures = new Map(base.fixtures);
  for (
    const [name, text] of Object.entries({
      markdown: MARKDOWN_ANSWER,
      hostile: HOSTILE_ANSWER,
      numbered: NUMBERED_ANSWER,
    })
  ) {
    const sse = synthesizeStream({
      id: `msg_${name}`,
      model: "claude-sonnet-5-5",
      text,
      inputTokens: 20,
    });
    fixtures.set(name, { name, sse });
  }
  return { ...base, fixtures };
}

/** A sluice for the page: its app, the stats it recorded, the bodies sent upstream. */
export async function startPageServer(options: {
  env?: Record<string, string>;
  tokensPerSecond?: number;
  /** Wraps the app's fetch (to cut connections, say). */
  wrap?: (fetch: (request: Request) => Promise<Response>) => (r: Request) => Promise<Response>;
}) {
  const replay = createReplayFetch(await pageFixtures(), {
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
