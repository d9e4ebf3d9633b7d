/**
 * A setting given as JSON: inline when it starts with `{`, otherwise a path to a JSON file
 * (`SLUICE_PRICES`, `SLUICE_KEY_BUDGETS`). Each setting checks the shape itself and raises its
 * own error type, so the reading is here and the error is the caller's.
 */

/** Options for {@link readJsonSetting}. */
export interface JsonSettingOptions {
  /** Reads the file when the value is a path (injected so tests need no files). */
  readTextFile: (path: string) => string;
  /** The setting's error for `message` ("cannot read …", "not JSON: …"). */
  error: (message: string) => Error;
}

/**
 * The parsed JSON of a setting that is not blank: the value itself when it starts with `{`,
 * otherwise the file it names. Throws `options.error(…)` when the file cannot be read or the
 * text is not JSON.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { readJsonSetting } from "./json_setting.ts";
 * const options = {
 *   readTextFile: (path: string) => path === "caps.json" ? '{"*": {"daily_usd": 5}}' : "",
 *   error: (message: string) => new RangeError(message),
 * };
 * assert.deepEqual(readJsonSetting('{"a": 1}', options), { a: 1 });
 * assert.deepEqual(readJsonSetting("caps.json", options), { "*": { daily_usd: 5 } });
 * assert.throws(() => readJsonSetting("{nope", options), RangeError);
 * ```
 */
export function readJsonSetting(value: string, options: JsonSettingOptions): unknown {
  let text = value;
  if (!value.trim().startsWith("{")) {
    try {
      text = options.readTextFile(value);
    } catch (error) {
      throw options.error(`cannot read ${value}: ${(error as Error).message}`);
    }
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw options.error(`not JSON: ${(error as Error).message}`);
  }
}
