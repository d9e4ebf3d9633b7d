/**
 * Opening Deno KV: a local SQLite file by default, the managed KV on Deno Deploy.
 */
import type { Config } from "./config.ts";
import { SluiceError } from "./errors.ts";
import type { Logger } from "./log.ts";

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

/** Deno KV, or why there is none. */
export type KvOpening = { kv: Deno.Kv; fault?: undefined } | { kv?: undefined; fault: string };

/**
 * Opens KV as {@link openKv} does, and reads one key to see that it works: a damaged file (SQLite's
 * "database disk image is malformed", "file is not a database") must not stop sluice from
 * starting, since `/health` and `/v1/messages` need no KV. The fault is logged and returned;
 * what needs KV then answers {@link kvUnavailable}.
 */
export async function openKvOrFault(
  config: Pick<Config, "kvPath" | "onDeploy">,
  logger: Logger,
): Promise<KvOpening> {
  let kv: Deno.Kv | undefined;
  try {
    kv = await openKv(config);
    await kv.get(["sluice", "probe"]);
    return { kv };
  } catch (error) {
    try {
      kv?.close();
    } catch {
      // Closing a store that failed is best effort.
    }
    const fault = error instanceof Error ? error.message : String(error);
    logger.error(
      "Deno KV could not be opened; serving without it (stats, conversations, limits' KV " +
        "store and resumable streams are off until it is repaired)",
      { path: config.kvPath ?? (config.onDeploy ? "(Deno Deploy)" : DEFAULT_KV_PATH), fault },
    );
    return { fault };
  }
}

/** The refusal of a request that needs KV when there is none: a 503 in the API's shape. */
export function kvUnavailable(what: string, fault?: string): SluiceError {
  return new SluiceError(
    503,
    "api_error",
    `${what} need Deno KV, which ${fault ? `failed to open: ${fault}` : "is not set up"}`,
  );
}
