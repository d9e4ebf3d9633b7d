/**
 * The commit batcher of resumable streams: the writes submitted in one turn go out as one KV
 * operation, and a part whose check fails fails alone.
 */
import assert from "node:assert/strict";
import { type CommitPart, createCommitBatcher } from "../lib/chat/commit_batch.ts";

/** A KV whose atomic operations are counted. */
async function countedKv() {
  const kv = await Deno.openKv(":memory:");
  const atomic = kv.atomic.bind(kv);
  const counts = { commits: 0 };
  kv.atomic = () => {
    const op = atomic();
    const commit = op.commit.bind(op);
    op.commit = () => {
      counts.commits++;
      return commit();
    };
    return op;
  };
  return { kv, counts };
}

const part = (name: string, versionstamp: string | null = null): CommitPart => ({
  check: { key: ["head", name], versionstamp },
  sets: [{ key: ["head", name], value: name, expireIn: 60_000 }, {
    key: ["chunk", name],
    value: new Uint8Array(10),
    expireIn: 60_000,
  }],
  bytes: 100,
});

Deno.test("parts submitted in one turn are one commit, and each gets the result", async () => {
  const { kv, counts } = await countedKv();
  try {
    const batcher = createCommitBatcher(kv);
    const results = await Promise.all(["a", "b", "c"].map((name) => batcher.commit(part(name))));
    assert.equal(counts.commits, 1);
    assert.ok(results.every((result) => result.ok));
    for (const name of ["a", "b", "c"]) assert.equal((await kv.get(["head", name])).value, name);
  } finally {
    kv.close();
  }
});

Deno.test("a batch stays under its part and byte bounds", async () => {
  const { kv, counts } = await countedKv();
  try {
    const batcher = createCommitBatcher(kv, { maxParts: 2, maxBytes: 250 });
    await Promise.all(["a", "b", "c", "d", "e"].map((name) => batcher.commit(part(name))));
    assert.equal(counts.commits, 3); // 2 + 2 + 1 parts
    const big = { ...part("f"), bytes: 1_000 };
    await Promise.all([batcher.commit(big), batcher.commit(part("g"))]);
    assert.equal(counts.commits, 5); // a part over the bound goes alone
  } finally {
    kv.close();
  }
});

Deno.test("a part whose check fails fails alone; the others of its batch are written", async () => {
  const { kv } = await countedKv();
  try {
    const batcher = createCommitBatcher(kv);
    await kv.set(["head", "taken"], "someone else");
    const [ok, lost, alsoOk] = await Promise.all([
      batcher.commit(part("x")),
      batcher.commit(part("taken")), // expects no head, but there is one
      batcher.commit(part("y")),
    ]);
    assert.equal(ok.ok, true);
    assert.equal(lost.ok, false);
    assert.equal(alsoOk.ok, true);
    assert.equal((await kv.get(["head", "taken"])).value, "someone else");
    assert.equal((await kv.get(["head", "x"])).value, "x");
    assert.equal((await kv.get(["head", "y"])).value, "y");
  } finally {
    kv.close();
  }
});

Deno.test("a part committed alone goes out at once, in an operation of its own", async () => {
  const { kv, counts } = await countedKv();
  try {
    const batcher = createCommitBatcher(kv);
    const shared = batcher.commit(part("a"));
    const alone = batcher.commit(part("b"), true);
    assert.equal(counts.commits, 1); // already committed, before the batch's turn
    assert.equal((await alone).ok, true);
    assert.equal((await shared).ok, true);
    assert.equal(counts.commits, 2);
  } finally {
    kv.close();
  }
});
