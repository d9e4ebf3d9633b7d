/**
 * The real clients the client tests drive, and how they run: installed by `.ci/install_clients`
 * (`deno task setup:clients`) and linked into the project's gitignored `.sluice/`. A missing client
 * fails its test with the command that installs it: a skipped test would hide that CI lost it.
 */
import { fileURLToPath } from "node:url";
import type { SeenRequest } from "./helpers.ts";
import { serveOnLoopback } from "./helpers.ts";

const SLUICE_DIR = new URL("../.sluice/", import.meta.url);

/** The clients `.ci/install_clients` installs, and where they end up. */
const TOOLS = {
  claude: { label: "Claude Code", path: "tools/claude-code/node_modules/.bin/claude" },
  python: { label: "The Python SDK's virtualenv", path: "venv/bin/python" },
} as const;

/** The absolute path of an installed client; throws, saying how to install it, when it is not. */
export function requireTool(name: keyof typeof TOOLS): string {
  const { label, path } = TOOLS[name];
  const file = fileURLToPath(new URL(path, SLUICE_DIR));
  try {
    Deno.statSync(file);
  } catch {
    throw new Error(
      `${label} is not installed (${file} is missing): run \`deno task setup:clients\` ` +
        "(.ci/run does it before the tests)",
    );
  }
  return file;
}

/** What a client process did. */
export interface ClientRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a client with ONLY `env` (plus a system PATH) in its environment: nothing of the test
 * runner's (proxies, keys, a real HOME) can point it at the network. Killed after `timeoutMs`.
 */
export async function runClient(
  command: string,
  options: { args?: string[]; env?: Record<string, string>; cwd?: string; timeoutMs?: number },
): Promise<ClientRun> {
  const output = await new Deno.Command(command, {
    args: options.args ?? [],
    cwd: options.cwd,
    clearEnv: true,
    env: { PATH: "/usr/local/bin:/usr/bin:/bin", ...options.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(options.timeoutMs ?? 60_000),
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** A fresh temporary folder, removed by the returned `remove`. */
export async function tempDir(prefix: string): Promise<{ path: string; remove(): Promise<void> }> {
  const path = await Deno.makeTempDir({ prefix });
  return { path, remove: () => Deno.remove(path, { recursive: true }) };
}

/**
 * Serves `app` on 127.0.0.1 and keeps what each request looked like as it arrived at sluice (before
 * any of sluice's code), so a test can compare it with what the upstream then received.
 */
export function serveTapped(app: { fetch: (request: Request) => Response | Promise<Response> }) {
  const received: SeenRequest[] = [];
  const server = serveOnLoopback({
    fetch: async (request) => {
      const url = new URL(request.url);
      received.push({
        method: request.method,
        path: url.pathname,
        search: url.search,
        headers: request.headers,
        body: await request.clone().text(),
      });
      return app.fetch(request);
    },
  });
  return { ...server, received };
}

/** The values of a comma-separated header (such as `anthropic-beta`), trimmed and sorted. */
export function headerValues(headers: Headers, name: string): string[] {
  return (headers.get(name) ?? "").split(",").map((v) => v.trim()).filter(Boolean).sort();
}
