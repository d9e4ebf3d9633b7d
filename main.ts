/**
 * sluice's entry point: reads the configuration and serves it, in this isolate or in one
 * worker per core (`SLUICE_WORKERS`, or `--workers N|auto`, which `deno task start` passes as
 * `auto`; the variable wins). Wiring only; everything else lives in lib/ and routes/.
 */
import { parseArgs } from "node:util";
import { ConfigError, parseConfig } from "./lib/config.ts";
import { serveSluice, StartError } from "./lib/serve.ts";
import { startWorkers, workerCount } from "./lib/http/workers.ts";

let config;
const env = Deno.env.toObject();
try {
  config = parseConfig(env);
} catch (error) {
  if (error instanceof ConfigError) {
    console.error(`sluice: ${error.message}`);
    Deno.exit(1);
  }
  throw error;
}

const { values } = parseArgs({ args: Deno.args, options: { workers: { type: "string" } } });
const flag = values.workers === "auto" ? "auto" : Number(values.workers ?? 1) || 1;
const workers = workerCount(config.workers ?? flag);

try {
  if (workers > 1) await startWorkers(config, env, workers);
  else await serveSluice(config);
} catch (error) {
  if (error instanceof StartError) {
    console.error(`sluice: ${error.message}`);
    Deno.exit(1);
  }
  throw error;
}
