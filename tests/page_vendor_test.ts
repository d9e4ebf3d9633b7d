/**
 * The page's bundled libraries (lib/page/vendor.js and vendor.css, built by
 * `deno task build:page` and committed) are the versions deno.json pins.
 */
import assert from "node:assert/strict";
import { banner, bundledVersions } from "../lib/page/build/build.ts";

Deno.test("the committed page bundle was built from the library versions deno.json pins", async (t) => {
  const expected = banner(await bundledVersions());
  for (const name of ["vendor.js", "vendor.css"]) {
    await t.step(`${name} names them on its first line`, async () => {
      const text = await Deno.readTextFile(new URL(`../lib/page/${name}`, import.meta.url));
      assert.equal(text.slice(0, text.indexOf("\n")), expected, "run deno task build:page");
    });
  }
  await t.step("the bundle exports what the page imports", async () => {
    const text = await Deno.readTextFile(new URL("../lib/page/vendor.js", import.meta.url));
    assert.match(text, /export\{[^}]*\bas DOMPurify\b/);
    assert.match(text, /export\{[^}]*\bas Marked\b/);
    assert.match(text, /export\{[^}]*\bas hljs\b/);
    assert.match(text, /export\{[^}]*\bas EventSourceParserStream\b/);
  });
});
