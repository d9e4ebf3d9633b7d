/**
 * sluice against the reference corpus: real recorded streams and the SDK's golden outputs, kept
 * outside this repository. Not part of `deno task test` (a clone alone must pass that); run by
 * `deno task test:reference` with `SLUICE_REFERENCE_DIR` naming the folder of `.sse` files
 * (`.ci/run` does so when the corpus is beside the checkout).
 */
import assert from "node:assert/strict";
import { EventAccumulator } from "../lib/stream/accumulator.ts";
import { createSseDecoder } from "../lib/stream/sse.ts";
import { sdkOracle } from "./helpers.ts";
import { agreeOnFiles, sseFiles } from "./sdk_agreement.ts";

/** The corpus folder, from `SLUICE_REFERENCE_DIR`; the task fails plainly without it. */
function referenceDir(): URL {
  const dir = Deno.env.get("SLUICE_REFERENCE_DIR");
  if (!dir) throw new Error("set SLUICE_REFERENCE_DIR to the folder of reference .sse files");
  return new URL(`file://${dir.endsWith("/") ? dir : dir + "/"}`);
}

Deno.test("every reference recording accumulates to what the official SDK builds from the same bytes", async (t) => {
  const files = await sseFiles(referenceDir());
  assert.ok(files.length >= 10, "the corpus holds its recordings");
  await agreeOnFiles(t, files);
});

Deno.test("the docs' thinking transcript (no usage anywhere) accumulates where the SDK throws", async () => {
  const bytes = await Deno.readFile(new URL("docs-extended-thinking.sse", referenceDir()));
  const sdk = await sdkOracle([bytes]);
  assert.match(sdk.error?.message ?? "", /output_tokens/, "the SDK is expected to fail here");
  const accumulator = new EventAccumulator();
  const decoder = createSseDecoder((e) => accumulator.push(e));
  decoder.feed(bytes);
  decoder.end();
  const result = accumulator.end();
  assert.equal(result.error, null);
  assert.equal(result.complete, true);
  assert.deepEqual(
    JSON.parse(JSON.stringify(result.message)).content,
    (sdk.lastSnapshot as { content: unknown }).content,
  );
  assert.equal(result.message?.stop_reason, "end_turn");
});
