/**
 * `deno task record NAME [options]`: sends one request to the live upstream (ANTHROPIC_API_KEY,
 * ANTHROPIC_BASE_URL) and writes `fixtures/NAME.sse` with `NAME.timing.json`, or `NAME.json` for
 * `--no-stream`, or `NAME.http.json` when the API answers with an error.
 *
 * Options: --prompt TEXT, --model M, --max-tokens N, --body FILE (a whole Messages body),
 * --no-stream, --out DIR (default: the fixtures folder), --force (overwrite); --help prints them.
 * Exits 0 once recorded, 1 when the API answered with an error (recorded all the same) or the
 * fixture exists, 2 for bad usage (a `--body` that is no JSON object among it), a bad
 * configuration value or a missing key.
 */
import { parseArgs } from "node:util";
import { record, writeRecording } from "../replay/record.ts";
import { createUpstream } from "../proxy/upstream.ts";
import { resolveFromCaller } from "./replay_source.ts";
import { argsOrExitCode, configOrExitCode } from "./usage.ts";

const DEFAULT_PROMPT = "Write me a 3 word sentence, without a preamble.";

/** The text `--help` prints, and a usage error after its one line. */
export const RECORD_USAGE =
  `usage: deno task record NAME [--prompt TEXT] [--model M] [--max-tokens N] [--body FILE]
                             [--no-stream] [--out DIR] [--force]
Sends one request to the live API (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL) and writes what came
back as the fixture NAME: NAME.sse with NAME.timing.json, NAME.json with --no-stream, or
NAME.http.json when the API answers with an error (then it exits 1).
  --prompt TEXT   the user message (default ${JSON.stringify(DEFAULT_PROMPT)})
  --model M       the model (default SLUICE_DEFAULT_MODEL; also replaces --body's)
  --max-tokens N  the answer's cut-off (default 1024)
  --body FILE     a whole Messages body to send instead of --prompt
  --no-stream     record a non-streaming answer
  --out DIR       where to write (default the fixtures folder, SLUICE_FIXTURES_DIR)
  --force         overwrite a fixture that exists`;

/** What `deno task record` was asked to do. */
export interface RecordArgs {
  name: string;
  prompt: string;
  model?: string;
  maxTokens: number;
  body?: string;
  noStream: boolean;
  out?: string;
  force: boolean;
}

/** Parses the command line; throws a one-line message for bad input. */
export function parseRecordArgs(args: string[]): RecordArgs | { help: true } {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      prompt: { type: "string", default: DEFAULT_PROMPT },
      model: { type: "string" },
      "max-tokens": { type: "string", default: "1024" },
      body: { type: "string" },
      "no-stream": { type: "boolean", default: false },
      out: { type: "string" },
      force: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return { help: true };
  if (positionals.length !== 1) throw new Error("name the one fixture to record");
  const name = positionals[0];
  const maxTokens = Number(values["max-tokens"]);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) {
    throw new Error(`--max-tokens must be a positive whole number (got ${values["max-tokens"]})`);
  }
  // The name becomes file names in the fixtures folder: no paths, nothing hidden.
  if (!/^[a-z0-9][a-z0-9._-]*$/i.test(name)) {
    throw new Error(`a fixture name is letters, digits, '.', '_' and '-' (got ${name})`);
  }
  return {
    name,
    prompt: values.prompt,
    model: values.model,
    maxTokens,
    body: values.body,
    noStream: values["no-stream"],
    out: values.out,
    force: values.force,
  };
}

/**
 * Reads `--body FILE`, a whole Messages body; throws a one-line message naming the file when it
 * cannot be read or is not a JSON object.
 */
async function readBodyFile(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(resolveFromCaller(file));
  } catch (error) {
    throw new Error(`cannot read --body ${file}: ${(error as Error).message}`);
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    // V8 quotes the text around the mistake, newlines and all: keep the message on one line.
    const why = (error as Error).message.replace(/\s+/g, " ");
    throw new Error(`--body ${file} is not valid JSON: ${why}`);
  }
  if (!body || typeof body !== "object" || Array.isArray(body)) {
    throw new Error(`--body ${file} is not a JSON object (a Messages body is one)`);
  }
  return body as Record<string, unknown>;
}

async function main(args: string[]): Promise<number> {
  const values = argsOrExitCode("record", RECORD_USAGE, () => parseRecordArgs(args));
  if (typeof values === "number") return values;
  const name = values.name;
  const config = configOrExitCode("record");
  if (typeof config === "number") return config;
  if (!config.anthropicApiKey) {
    console.error("record: ANTHROPIC_API_KEY is not set; recording needs the live API");
    return 2;
  }
  let body: Record<string, unknown>;
  try {
    body = values.body ? await readBodyFile(values.body) : {
      model: values.model ?? config.defaultModel,
      max_tokens: values.maxTokens,
      messages: [{ role: "user", content: values.prompt }],
    };
  } catch (error) {
    // A --body that cannot be sent is bad usage, found before anything goes upstream.
    console.error(`record: ${(error as Error).message}`);
    return 2;
  }
  if (values.model) body.model = values.model;
  body.stream = !values.noStream;
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
