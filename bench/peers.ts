/**
 * Peer gateways for the request bench, run side by side with sluice on the same fake upstream.
 *
 * Portkey's open-source gateway (`@portkey-ai/gateway`, a Hono app) runs on Bun: its streaming
 * fails on Node 20 and on Deno with `headers are immutable` (issue 13). Both come from the npm
 * registry, pinned here, into `.sluice/peers` (`deno task bench:peers`), outside the lockfile:
 * they are measured, never imported. LiteLLM is not here: it installs from PyPI, which this
 * machine does not reach; docs/performance.md quotes the figures for it.
 */
import type { ProxyUsage } from "./gateways.ts";
import { processUsage } from "./processes.ts";

/** The versions measured (the table names Portkey OSS 1.15.2 on Bun). */
export const PEER_PACKAGES = ["@portkey-ai/gateway@1.15.2", "bun@1.4.5"] as const;

/** Where `deno task bench:peers` installs them. */
export const PEERS_DIR: string = new URL("../.sluice/peers", import.meta.url).pathname;

/** A peer gateway process. */
export interface Peer {
  url: string;
  process: Deno.ChildProcess;
  /** Headers every request through it needs (Portkey: the provider and the upstream's URL). */
  headers: Record<string, string>;
  /** CPU time and RSS of the process (from /proc), as bench/gateways.ts's gateways report theirs. */
  usage(): Promise<ProxyUsage>;
}

/** Whether the peers are installed (`deno task bench:peers`). */
export async function peersInstalled(dir = PEERS_DIR): Promise<boolean> {
  try {
    await Deno.stat(`${dir}/node_modules/.bin/bun`);
    await Deno.stat(portkeyServer(dir));
    return true;
  } catch {
    return false;
  }
}

function portkeyServer(dir: string): string {
  return `${dir}/node_modules/@portkey-ai/gateway/build/start-server.js`;
}

/** A free port on 127.0.0.1 (Portkey takes its port on the command line). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/**
 * Starts Portkey on Bun in front of `upstreamUrl` and waits until it answers. Requests go to its
 * `POST /v1/messages` (Anthropic's shape, passed to the `anthropic` provider) with the upstream
 * as the provider's custom host.
 */
export async function startPortkey(upstreamUrl: string, dir = PEERS_DIR): Promise<Peer> {
  const port = freePort();
  const process = new Deno.Command(`${dir}/node_modules/.bin/bun`, {
    args: [portkeyServer(dir), `--port=${port}`, "--headless"],
    env: { NODE_ENV: "production" },
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0;; i++) {
    try {
      const answer = await fetch(url);
      await answer.body?.cancel();
      break;
    } catch (error) {
      if (i >= 100) {
        process.kill("SIGTERM");
        throw new Error(`portkey did not start: ${error}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  return {
    url,
    process,
    headers: {
      "x-portkey-provider": "anthropic",
      "x-portkey-custom-host": `${upstreamUrl}/v1`,
    },
    usage: () => processUsage(process.pid),
  };
}

/** `deno task bench:peers`: installs {@link PEER_PACKAGES} into {@link PEERS_DIR} with npm. */
async function install(): Promise<void> {
  const npm = new Deno.Command("npm", {
    args: [
      "install",
      "--prefix",
      PEERS_DIR,
      "--no-audit",
      "--no-fund",
      "--loglevel=error",
      ...PEER_PACKAGES,
    ],
    stdout: "inherit",
    stderr: "inherit",
  });
  const { success } = await npm.output();
  if (!success) Deno.exit(1);
  console.log(`installed ${PEER_PACKAGES.join(", ")} into ${PEERS_DIR}`);
}

if (import.meta.main) await install();
