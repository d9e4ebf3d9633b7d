/**
 * Opening Deno KV: a local SQLite file by default, the managed KV on Deno Deploy.
 */
import type { Config } from "./config.ts";

/** The local default, relative to the working directory. */
export const DEFAULT_KV_PATH = ".sluice/kv.sqlite3";

/**
 * Opens the KV store `config` names: `SLUICE_KV_PATH` (a file, or `:memory:`); on Deno Deploy
 * with no path, the managed KV; otherwise `.sluice/kv.sqlite3`.
 */
export async function openKv(config: Pick<Config, "kvPath" | "onDeploy">): Promise<Deno.Kv> {
  if (config.kvPath) return await Deno.openKv(config.kvPath);
  if (config.onDeploy) return await Deno.openKv();
  await Deno.mkdir(".sluice", { recursive: true });
  return await Deno.openKv(DEFAULT_KV_PATH);
}
