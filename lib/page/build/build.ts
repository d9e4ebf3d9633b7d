/**
 * `deno task build:page`: bundles the page's libraries (entry.js: marked, DOMPurify, highlight.js
 * core with a few languages, eventsource-parser) into lib/page/vendor.js, and highlight.js's GitHub light and dark
 * themes into lib/page/vendor.css. The output is committed and served by sluice itself, so the
 * page works offline and the server reads no npm files at run time (Deno Deploy included); a
 * bundle is used rather than the packages' own files because highlight.js ships CommonJS only.
 * Each output starts with the versions it was built from; tests/page_vendor_test.ts checks them
 * against deno.json.
 */
import { createRequire } from "node:module";

const PACKAGES = ["marked", "dompurify", "highlight.js", "eventsource-parser"] as const;

/** `name@version` of each bundled package, as deno.json pins it. */
export async function bundledVersions(): Promise<string[]> {
  const config = JSON.parse(
    await Deno.readTextFile(new URL("../../../deno.json", import.meta.url)),
  );
  return PACKAGES.map((name) => String(config.imports[name]).replace(/^npm:/, ""));
}

/** The first line of each output: what it was built from. */
export function banner(versions: string[]): string {
  return `/* sluice page vendor bundle: ${versions.join(" ")} (deno task build:page) */`;
}

async function build(): Promise<void> {
  const out = new URL("../vendor.js", import.meta.url);
  const bundled = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--format",
      "esm",
      "--minify",
      "-o",
      out.pathname,
      new URL("./entry.js", import.meta.url).pathname,
    ],
  }).output();
  if (!bundled.success) throw new Error(new TextDecoder().decode(bundled.stderr));
  const head = banner(await bundledVersions());
  await Deno.writeTextFile(out, `${head}\n${await Deno.readTextFile(out)}`);

  const require = createRequire(import.meta.url);
  const theme = (name: string) => Deno.readTextFile(require.resolve(`highlight.js/styles/${name}`));
  const css = [
    head,
    "@media (prefers-color-scheme: light) {",
    await theme("github.min.css"),
    "}",
    "@media (prefers-color-scheme: dark) {",
    await theme("github-dark.min.css"),
    "}",
    "",
  ].join("\n");
  await Deno.writeTextFile(new URL("../vendor.css", import.meta.url), css);
}

if (import.meta.main) await build();
