/**
 * What `deno task replay ARG` replays: the file ARG when there is one, else the fixture of that
 * name in the fixtures folder (a name as `deno task replay --list` shows it). Either is a stream
 * or an HTTP error answer; a fixture's other JSON files (`NAME.json`, `NAME.timing.json`) are
 * refused with the way to replay their stream.
 */
import { type Fixture, loadFixtures } from "../replay/fixtures.ts";
import { parseHttpAnswer } from "./http_answer.ts";

/** ARG is no file or fixture with something to replay; the message says so. */
export class NoFixtureError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NoFixtureError";
  }
}

/** `deno task` runs in the project folder; resolve a relative path from where the user was. */
export function resolveFromCaller(path: string): string {
  const from = Deno.env.get("INIT_CWD");
  if (!from || path.startsWith("/")) return path;
  return `${from.replace(/\/+$/, "")}/${path}`;
}

/**
 * Reads a recorded stream, `NAME.sse`, with the `NAME.timing.json` beside it when there is one,
 * or a recorded HTTP error answer, `NAME.http.json`.
 */
export async function readFixtureFile(path: string): Promise<Fixture> {
  if (path.endsWith(".http.json")) {
    // Not a stream: read as one, its JSON decodes to no events and looks like an empty, cut answer.
    return { name: path, http: parseHttpAnswer(JSON.parse(await Deno.readTextFile(path))) };
  }
  const fixture: Fixture = { name: path, sse: await Deno.readFile(path) };
  try {
    const timingPath = path.replace(/\.sse$/, "") + ".timing.json";
    fixture.timing = JSON.parse(await Deno.readTextFile(timingPath)).chunks;
  } catch {
    // No recorded timing: the default pace applies.
  }
  return fixture;
}

/**
 * The fixture ARG means. A path that exists wins, so a file of yours that happens to share a
 * fixture's name is still replayed as the file; a name is looked up only when there is no file.
 */
export async function openFixture(arg: string, fixturesDir: string): Promise<Fixture> {
  const path = resolveFromCaller(arg);
  try {
    const held = await unstreamedJson(path);
    if (held === null) return await readFixtureFile(path);
    throw new NoFixtureError(await notAStream(arg, path, held, fixturesDir));
  } catch (error) {
    // Any other failure (a folder, no permission) is about the file the user meant: say that.
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  let fixtures: Map<string, Fixture>;
  try {
    ({ fixtures } = await loadFixtures(fixturesDir));
  } catch (error) {
    throw new NoFixtureError(
      `no file ${arg}, and the fixtures in ${fixturesDir} cannot be read: ` +
        (error as Error).message,
    );
  }
  const fixture = fixtures.get(arg);
  if (!fixture) {
    const names = [...fixtures.keys()].sort().join(", ");
    throw new NoFixtureError(
      `no file ${arg}, and no fixture of that name in ${fixturesDir}; the fixtures are: ${names}`,
    );
  }
  if (!fixture.sse && !fixture.http) {
    // A `deno task record --no-stream` fixture holds only the JSON body: nothing streams.
    throw new NoFixtureError(`the fixture ${arg} has no stream to replay (no ${arg}.sse)`);
  }
  return fixture;
}

/** What a fixture's JSON file that is not a stream holds, by its shape. */
type Unstreamed = "body" | "timing" | "json";

/**
 * What the file at `path` holds when it is a `.json` file other than an HTTP answer; null when it
 * is to be read as a stream. Read as one, its JSON decodes to no events: an empty, cut answer
 * that says nothing of the mistake.
 */
async function unstreamedJson(path: string): Promise<Unstreamed | null> {
  if (!path.endsWith(".json") || path.endsWith(".http.json")) return null;
  let json: { type?: unknown; chunks?: unknown } | null;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    // Not JSON after all (a stream saved under that name?): replay what it holds.
    if (error instanceof SyntaxError) return null;
    throw error;
  }
  if (json?.type === "message") return "body";
  return Array.isArray(json?.chunks) ? "timing" : "json";
}

/** The one line that says what the file is and how to replay the stream beside it, if any. */
async function notAStream(
  arg: string,
  path: string,
  held: Unstreamed,
  fixturesDir: string,
): Promise<string> {
  const what = {
    body: "a fixture's non-streamed body (NAME.json)",
    timing: "a fixture's recorded timing (NAME.timing.json)",
    json: "JSON",
  }[held];
  const stem = /(\.timing)?\.json$/;
  const sseArg = arg.replace(stem, ".sse");
  const ssePath = path.replace(stem, ".sse");
  const line = `${arg} is ${what}, not a stream`;
  if (!(await isFile(ssePath))) {
    return held === "json"
      ? `${line} (a recorded stream is a NAME.sse file)`
      : `${line}, and there is no ${sseArg} beside it to replay`;
  }
  const name = ssePath.slice(ssePath.lastIndexOf("/") + 1, -".sse".length);
  // The name replays this stream only when it is the one in the fixtures folder.
  const byName = await sameFile(ssePath, `${fixturesDir.replace(/\/+$/, "")}/${name}.sse`);
  return `${line}; to replay its stream: deno task replay ` +
    (byName ? `${name} (or ${sseArg})` : sseArg);
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

async function sameFile(a: string, b: string): Promise<boolean> {
  try {
    return (await Deno.realPath(a)) === (await Deno.realPath(b));
  } catch {
    return false;
  }
}
