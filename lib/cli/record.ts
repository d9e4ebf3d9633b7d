/**
 * `deno task record NAME [options]`: sends one request to the live upstream (ANTHROPIC_API_KEY,
 * ANTHROPIC_BASE_URL) and writes `fixtures/NAME.sse` with `NAME.timing.json`, or `NAME.json` for
 * `--no-stream`, or `NAME.http.json` when the API answers with an error.
 *
 * Options: --prompt TEXT, --model M, --max-tokens N, --body FILE (a whole Messages body),
 * --no-stream, --out DIR (default: the fixtures folder), --force (overwrite).
 */
import { parseArgs } from "node:util";
import { ConfigError, parseConfig } from "../config.ts";
import { record, writeRecording } from "../replay/record.ts";
import { createUpstream } from "../proxy/upstream.ts";
import { resolveFromCaller } from "./replay.ts";

async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      prompt: { type: "string", default: "Write me a 3 word sentence, without a preamble." },
      model: { type: "string" },
      "max-tokens": { type: "string", default: "1024" },
      body: { type: "string" },
      "no-stream": { type: "boolean", default: false },
      out: { type: "string" },
      force: { type: "boolean", default: false },
    },
  });
  const name = positionals[0];
  if (positionals.length !== 1 || !/^[a-z0-9][a-z0-9._-]*$/i.test(name)) {
    console.error("usage: deno task record NAME [--prompt TEXT] [--model M] [--max-tokens N]");
    console.error("       [--body FILE] [--no-stream] [--out DIR] [--force]");
    return 2;
  }
  let config;
  try {
    config = parseConfig(Deno.env.toObject());
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`record: ${error.message}`);
      return 2;
    }
    throw error;
  }
  if (!config.anthropicApiKey) {
    console.error("record: ANTHROPIC_API_KEY is not set; recording needs the live API");
    return 2;
  }
  const maxTokens = Number(values["max-tokens"]);
  const body: Record<string, unknown> = values.body
    ? JSON.parse(await Deno.readTextFile(resolveFromCaller(values.body)))
    : {
      model: values.model ?? config.defaultModel,
      max_tokens: maxTokens,
      messages: [{ role: "user", content: values.prompt }],
    };
  if (values.model) body.model = values.model;
  body.stream = !values["no-stream"];
  const upstream = createUpstream({
    mode: "live",
    apiKey: config.anthropicApiKey,
    baseURL: config.anthropicBaseUrl,
    maxRetries: config.maxRetries,
  });
  const recording = await record({ upstream, body });
  const dir = values.out ? resolveFromCaller(values.out) : config.fixturesDir;
  try {
    const paths = await writeRecording(dir, name, recording, { overwrite: values.force });
    console.log(`recorded ${recording.kind} (HTTP ${recording.status}): ${paths.join(", ")}`);
  } catch (error) {
    if (error instanceof Deno.errors.AlreadyExists) {
      console.error(`record: ${name} exists in ${dir}; pass --force to overwrite`);
      return 1;
    }
    throw error;
  }
  return recording.kind === "http" ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
