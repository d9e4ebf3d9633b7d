/**
 * The layout rule of docs/architecture.md, checked: no function in lib/ or routes/ runs past
 * ~80 lines. A function is found by its declaration line (`function name(`, a method, or an
 * arrow assigned to a const) and measured to the closing brace at its own indentation, which
 * `deno fmt` makes reliable. TypeScript only: the page's bundled vendor files are not ours.
 */
import assert from "node:assert/strict";

const MAX_LINES = 80;
const ROOT = new URL("../", import.meta.url);
const DECLARATION = new RegExp(
  String.raw`^(\s*)(?:export )?(?:async )?function\*? (\w+)|` +
    String.raw`^(\s*)(?:async )?(\w+)\(.*\)(?::[^=]*)? \{$|` +
    String.raw`^(\s*)(?:export )?const (\w+) = (?:async )?\(.*=> \{$`,
);
const KEYWORDS = new Set(["if", "for", "while", "switch", "catch"]);

async function* sources(dir: URL): AsyncGenerator<URL> {
  for await (const entry of Deno.readDir(dir)) {
    const url = new URL(entry.name + (entry.isDirectory ? "/" : ""), dir);
    if (entry.isDirectory) yield* sources(url);
    else if (entry.name.endsWith(".ts")) yield url;
  }
}

/** Functions of `text` longer than `max` lines: `name:line (length)`. */
export function longFunctions(text: string, max: number): string[] {
  const lines = text.split("\n");
  const found: string[] = [];
  lines.forEach((line, i) => {
    const match = DECLARATION.exec(line);
    const name = match && (match[2] ?? match[4] ?? match[6]);
    if (!name || KEYWORDS.has(name)) return;
    const indent = line.length - line.trimStart().length;
    for (let j = i + 1; j < lines.length; j++) {
      const other = lines[j];
      if (other.startsWith(" ".repeat(indent) + "}") && other[indent] === "}") {
        if (j - i + 1 > max) found.push(`${name}:${i + 1} (${j - i + 1} lines)`);
        return;
      }
    }
  });
  return found;
}

Deno.test("the length check finds a long function and passes a short one", () => {
  const body = (n: number) => Array.from({ length: n }, () => "  work();").join("\n");
  assert.deepEqual(longFunctions(`function long() {\n${body(85)}\n}\n`, MAX_LINES), [
    "long:1 (87 lines)",
  ]);
  assert.deepEqual(longFunctions(`function short() {\n${body(20)}\n}\n`, MAX_LINES), []);
});

Deno.test("no function in lib/ or routes/ is longer than 80 lines", async () => {
  const offenders: string[] = [];
  for (const folder of ["lib/", "routes/"]) {
    for await (const file of sources(new URL(folder, ROOT))) {
      const path = file.pathname.slice(ROOT.pathname.length);
      for (const hit of longFunctions(await Deno.readTextFile(file), MAX_LINES)) {
        offenders.push(`${path}: ${hit}`);
      }
    }
  }
  assert.deepEqual(offenders, []);
});
