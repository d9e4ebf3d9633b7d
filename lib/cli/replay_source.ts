/**
 * What `deno task replay ARG` replays: the file ARG when there is one, else the fixture of that
 * name in the fixtures folder (a name as `deno task replay --list` shows it). Either is a stream
 * or an HTTP error answer.
 */
import { type Fixture, loadFixtures } from "../replay/fixtures.ts";
import { parseHttpAnswer } from "./http_answer.ts";

/** ARG is neither a file nor a fixture with something to replay; the message says so. */
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
  try {
    return await readFixtureFile(resolveFromCaller(arg));
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
