/**
 * The command-line tools' shared handling of their arguments: `--help` prints the usage and
 * exits 0; an argument the tool refuses (parseArgs throws a TypeError for an unknown option)
 * prints why and the usage and exits 2, never a stack trace; so does a bad configuration value.
 */
import { type Config, ConfigError, parseConfig } from "../config.ts";

/**
 * `parse()`'s result, or the exit code when there is nothing more to do: 0 after `--help`
 * (`{ help: true }`), 2 after a usage error. `name` prefixes the error line.
 */
export function argsOrExitCode<T extends object>(
  name: string,
  usage: string,
  parse: () => T | { help: true },
): T | number {
  let parsed: T | { help: true };
  try {
    parsed = parse();
  } catch (error) {
    console.error(`${name}: ${(error as Error).message}\n\n${usage}`);
    return 2;
  }
  if ("help" in parsed && parsed.help === true) {
    console.log(usage);
    return 0;
  }
  return parsed as T;
}

/**
 * The configuration from the environment, or exit code 2 after printing why it is refused (a
 * bad value is the user's to fix: its message, not a stack trace).
 */
export function configOrExitCode(name: string): Config | number {
  try {
    return parseConfig(Deno.env.toObject());
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`${name}: ${error.message}`);
    return 2;
  }
}
