/**
 * The chunk redactor (lib/redact.ts): a secret is replaced in a stream however its chunks are
 * cut, and every other byte passes unchanged and in order.
 */
import assert from "node:assert/strict";
import { createRedactor, REDACTED } from "../lib/redact.ts";

const SECRET = "sk-ant-api03-secret-0123456789";
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/** `text` through a fresh chunk redactor, cut at `cuts` (offsets into its bytes). */
function through(text: string, cuts: number[]): string {
  const redactor = createRedactor([SECRET]).chunks()!;
  const bytes = enc(text);
  const out: string[] = [];
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    out.push(dec(redactor.push(bytes.subarray(from, cut))));
    from = cut;
  }
  out.push(dec(redactor.end()));
  return out.join("");
}

Deno.test("a secret is replaced in a stream wherever its chunks are cut", () => {
  const text = `data: {"text":"yes, ${SECRET} and sk-ant again ${SECRET}s"}\n\n`;
  const length = enc(text).length;
  /** What must come out: every secret replaced, perhaps after up to 3 of its first bytes. */
  const check = (out: string, where: string) => {
    assert.equal(
      out.replaceAll(/(?:s|sk|sk-)?\[redacted\]/g, REDACTED),
      text.replaceAll(SECRET, REDACTED),
      where,
    );
    assert.ok(!out.includes(SECRET.slice(3)), `${where}: no part of the secret past its start`);
  };
  for (let cut = 0; cut <= length; cut++) {
    check(through(text, [cut]), `one cut at ${cut}`);
    for (let second = cut; second <= length; second += 7) {
      check(through(text, [cut, second]), `cuts at ${cut} and ${second}`);
    }
  }
});

Deno.test("bytes with no secret pass as they are, held only while they may start one", () => {
  const redactor = createRedactor([SECRET]).chunks()!;
  const plain = enc('data: {"text":"nothing secret here"}\n\n');
  assert.equal(redactor.push(plain), plain, "the same array, no copy");
  // Up to three bytes of the secret's start go at once (a chunk ending in "s" is common).
  const short = enc("yes, sk");
  assert.equal(redactor.push(short), short);
  assert.equal(dec(redactor.push(enc("ipped\n\n"))), "ipped\n\n");
  // More may be the secret: held until the next chunk says it is not.
  assert.equal(dec(redactor.push(enc("a risk: sk-an"))), "a risk: ");
  assert.equal(dec(redactor.push(enc("imal\n\n"))), "sk-animal\n\n");
  assert.equal(dec(redactor.push(enc("ends with sk-ant"))), "ends with ");
  assert.equal(dec(redactor.end()), "sk-ant", "what was held comes out at the end");
});

Deno.test("a secret whose first bytes were sent is replaced from there: only its shared start shows", () => {
  const redactor = createRedactor([SECRET]).chunks()!;
  assert.equal(dec(redactor.push(enc("key: sk-"))), "key: sk-");
  assert.equal(dec(redactor.push(enc(SECRET.slice(3) + " end"))), `${REDACTED} end`);
  // And a secret started in a short chunk, held once it is longer than three bytes.
  assert.equal(dec(redactor.push(enc("sk"))), "sk");
  assert.equal(dec(redactor.push(enc("-ant-a"))), "");
  assert.equal(dec(redactor.push(enc(SECRET.slice(8)))), REDACTED);
  assert.equal(dec(redactor.end()), "");
});

Deno.test("with no secret (replay mode) there is no chunk redactor at all", () => {
  assert.equal(createRedactor([]).chunks(), undefined);
});
