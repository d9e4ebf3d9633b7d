/**
 * The command-line tools' shared handling of their arguments: `--help` prints the usage and
 * exits 0; an argument the tool refuses (parseArgs throws a TypeError for an unknown option)
 * prints why and the usage and exits 2, never a stack trace.
 */

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
