import assert from "node:assert/strict";
import { manualClock } from "../lib/clock.ts";
import type { Conversation, ConversationLimits, Turn } from "../lib/chat/conversations.ts";
import {
  ConversationTooLargeError,
  createConversationStore,
  encodeConversation,
  fitConversation,
  InvalidCursorError,
  isConversationId,
} from "../lib/chat/conversations.ts";
import { kvWithAtomic, replayApp, testConfig } from "./helpers.ts";

const HOUR = 3_600_000;
const LIMITS: ConversationLimits = { maxTurns: 6, maxBytes: 60_000, ttlMs: HOUR };

function exchange(n: number, size = 1): [Turn, Turn] {
  return [
    { role: "user", content: `question ${n} ${"q".repeat(size)}` },
    { role: "assistant", content: `answer ${n} ${"a".repeat(size)}` },
  ];
}

async function withStore(
  limits: ConversationLimits,
  fn: (
    store: ReturnType<typeof createConversationStore>,
    clock: ReturnType<typeof manualClock>,
    kv: Deno.Kv,
  ) => Promise<void>,
) {
  const kv = await Deno.openKv(":memory:");
  const clock = manualClock(Date.UTC(2026, 0, 1));
  try {
    await fn(createConversationStore({ kv, limits, clock }), clock, kv);
  } finally {
    kv.close();
  }
}

Deno.test("the conversation store keeps, bounds and forgets histories", async (t) => {
  await t.step("create then get returns an empty conversation with its defaults", async () => {
    await withStore(LIMITS, async (store, clock) => {
      const created = await store.create("owner-a", { system: "Be brief.", model: "m" });
      assert.ok(isConversationId(created.id));
      assert.equal(created.expiresAt, clock.now() + HOUR);
      assert.deepEqual(await store.get("owner-a", created.id), created);
      assert.equal(created.system, "Be brief.");
      assert.deepEqual(created.turns, []);
    });
  });

  await t.step("ids are random and well-formed; junk ids are simply not found", async () => {
    await withStore(LIMITS, async (store) => {
      const a = await store.create("o");
      const b = await store.create("o");
      assert.notEqual(a.id, b.id);
      assert.equal(await store.get("o", "../../etc"), null);
      assert.equal(await store.get("o", ""), null);
    });
  });

  await t.step("append adds exchanges in order and refreshes the expiry", async () => {
    await withStore(LIMITS, async (store, clock) => {
      const { id } = await store.create("o");
      clock.advance(10 * 60_000);
      const result = await store.append("o", id, exchange(1));
      assert.equal(result.status, "stored");
      await store.append("o", id, exchange(2));
      const conversation = (await store.get("o", id))!;
      assert.deepEqual(conversation.turns, [...exchange(1), ...exchange(2)]);
      assert.equal(conversation.expiresAt, clock.now() + HOUR);
      assert.equal(conversation.updatedAt, clock.now());
    });
  });

  await t.step("over the turn bound, the oldest exchanges are dropped in pairs", async () => {
    await withStore(LIMITS, async (store) => {
      const { id } = await store.create("o");
      for (let n = 1; n <= 5; n++) await store.append("o", id, exchange(n));
      const conversation = (await store.get("o", id))!;
      assert.deepEqual(conversation.turns, [...exchange(3), ...exchange(4), ...exchange(5)]);
      assert.equal(conversation.droppedTurns, 4);
      assert.equal(conversation.turns[0].role, "user");
    });
  });

  await t.step("over the byte bound, the oldest exchanges are dropped until it fits", async () => {
    const limits = { ...LIMITS, maxTurns: 100, maxBytes: 2_000 };
    await withStore(limits, async (store) => {
      const { id } = await store.create("o");
      for (let n = 1; n <= 6; n++) await store.append("o", id, exchange(n, 300));
      const conversation = (await store.get("o", id))!;
      assert.ok(encodeConversation(conversation).length <= 2_000);
      // Each exchange is ~650 bytes, so two fit with the envelope, not three.
      assert.deepEqual(conversation.turns, [...exchange(5, 300), ...exchange(6, 300)]);
      assert.equal(conversation.droppedTurns, 8);
    });
  });

  await t.step("an exchange too big even alone is refused and the history kept", async () => {
    const limits = { ...LIMITS, maxBytes: 1_500 };
    await withStore(limits, async (store) => {
      const { id } = await store.create("o");
      await store.append("o", id, exchange(1));
      const result = await store.append("o", id, exchange(2, 2_000));
      assert.equal(result.status, "too_large");
      assert.deepEqual((await store.get("o", id))!.turns, exchange(1));
    });
  });

  await t.step("multi-byte text is counted in UTF-8 bytes", () => {
    const conversation: Conversation = {
      id: "conv_x",
      createdAt: 0,
      updatedAt: 0,
      expiresAt: 1,
      turns: [...exchange(1), { role: "user", content: "🙂".repeat(100) }, {
        role: "assistant",
        content: "é".repeat(100),
      }],
      droppedTurns: 0,
    };
    const size = encodeConversation(conversation).length;
    // 100 emoji are 200 UTF-16 units but 400 bytes; 100 "é" are 100 units but 200 bytes.
    assert.equal(size, JSON.stringify(conversation).length + 300);
    assert.equal(fitConversation(conversation, { maxTurns: 10, maxBytes: size })!.turns.length, 4);
    const fitted = fitConversation(conversation, { maxTurns: 10, maxBytes: size - 1 })!;
    assert.deepEqual(fitted.turns, conversation.turns.slice(2));
  });

  await t.step("a conversation is invisible to other owners", async () => {
    await withStore(LIMITS, async (store) => {
      const { id } = await store.create("alice");
      assert.equal(await store.get("bob", id), null);
      assert.deepEqual(await store.append("bob", id, exchange(1)), { status: "missing" });
      assert.equal(await store.delete("bob", id), false);
      assert.notEqual(await store.get("alice", id), null);
    });
  });

  await t.step("delete removes it, then it is missing", async () => {
    await withStore(LIMITS, async (store) => {
      const { id } = await store.create("o");
      assert.equal(await store.delete("o", id), true);
      assert.equal(await store.get("o", id), null);
      assert.equal(await store.delete("o", id), false);
      assert.deepEqual(await store.append("o", id, exchange(1)), { status: "missing" });
    });
  });

  await t.step("past its expiry a conversation is gone, even before KV deletes it", async () => {
    await withStore(LIMITS, async (store, clock) => {
      const { id } = await store.create("o");
      clock.advance(HOUR - 1);
      assert.notEqual(await store.get("o", id), null);
      clock.advance(1);
      assert.equal(await store.get("o", id), null);
      assert.deepEqual(await store.append("o", id, exchange(1)), { status: "missing" });
    });
  });

  await t.step("every write sets KV's expireIn to the time to live", async () => {
    const kv = await Deno.openKv(":memory:");
    try {
      const options: unknown[] = [];
      // A KV whose atomic operations report the options of each `set`.
      const spy = kvWithAtomic(kv, (op) => {
        const set = op.set.bind(op);
        op.set = (key, value, setOptions) => {
          options.push(setOptions);
          return set(key, value, setOptions);
        };
      });
      const store = createConversationStore({ kv: spy, limits: LIMITS });
      const { id } = await store.create("o");
      await store.append("o", id, exchange(1));
      // Each write sets the conversation and its entry in the owner's usage.
      assert.deepEqual(options, Array(4).fill({ expireIn: HOUR }));
    } finally {
      kv.close();
    }
  });

  await t.step("concurrent appends all land (optimistic retries)", async () => {
    await withStore({ ...LIMITS, maxTurns: 100 }, async (store) => {
      const { id } = await store.create("o");
      const results = await Promise.all(
        [1, 2, 3, 4, 5].map((n) => store.append("o", id, exchange(n))),
      );
      assert.ok(results.every((r) => r.status === "stored"));
      const turns = (await store.get("o", id))!.turns;
      assert.equal(turns.length, 10);
      for (let i = 0; i < turns.length; i += 2) {
        assert.equal(turns[i].role, "user");
        const n = /^question (\d+) /.exec(turns[i].content)![1];
        assert.equal(turns[i + 1].content, `answer ${n} a`);
      }
    });
  });

  await t.step("a system prompt too big for the byte bound is refused at create", async () => {
    await withStore({ ...LIMITS, maxBytes: 1_024 }, async (store) => {
      await assert.rejects(
        () => store.create("o", { system: "x".repeat(2_000) }),
        ConversationTooLargeError,
      );
    });
  });
});

Deno.test("the /conversations routes create, show and delete conversations", async (t) => {
  const kv = await Deno.openKv(":memory:");
  try {
    const app = await replayApp({
      kv,
      config: testConfig({ SLUICE_CONVERSATION_MAX_BYTES: "1024" }),
    });
    let id = "";

    await t.step("POST with no body creates one: 201, its id and a Location", async () => {
      const response = await app.request("/conversations", { method: "POST" });
      assert.equal(response.status, 201);
      const body = await response.json();
      id = body.id;
      assert.ok(isConversationId(id));
      assert.equal(response.headers.get("location"), `/conversations/${id}`);
      assert.deepEqual(body.messages, []);
      assert.ok(Date.parse(body.expires_at) > Date.parse(body.created_at));
    });

    await t.step(
      "POST takes a system prompt and model, read as JSON like curl sends it",
      async () => {
        const response = await app.request("/conversations", {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: '{"system":"Be brief.","model":"claude-x"}',
        });
        assert.equal(response.status, 201);
        const body = await response.json();
        assert.equal(body.system, "Be brief.");
        assert.equal(body.model, "claude-x");
      },
    );

    await t.step("POST refuses bad bodies with a 400 in Anthropic's shape", async () => {
      for (const body of ["{", '{"sytem":"x"}', '{"model":""}', "[]"]) {
        const response = await app.request("/conversations", { method: "POST", body });
        assert.equal(response.status, 400, body);
        const error = await response.json();
        assert.equal(error.type, "error");
        assert.equal(error.error.type, "invalid_request_error");
      }
    });

    await t.step("POST with a system prompt over the byte bound is a 413", async () => {
      const response = await app.request("/conversations", {
        method: "POST",
        body: JSON.stringify({ system: "x".repeat(2_000) }),
      });
      assert.equal(response.status, 413);
      assert.equal((await response.json()).error.type, "request_too_large");
    });

    await t.step("GET returns it", async () => {
      const response = await app.request(`/conversations/${id}`);
      assert.equal(response.status, 200);
      const body = await response.json();
      assert.equal(body.id, id);
      assert.deepEqual(body.messages, []);
      assert.equal(body.dropped_turns, 0);
    });

    await t.step("DELETE removes it (204), then GET and DELETE are 404", async () => {
      const deleted = await app.request(`/conversations/${id}`, { method: "DELETE" });
      assert.equal(deleted.status, 204);
      assert.equal(await deleted.text(), "");
      for (const method of ["GET", "DELETE"]) {
        const response = await app.request(`/conversations/${id}`, { method });
        assert.equal(response.status, 404);
        assert.equal((await response.json()).error.type, "not_found_error");
      }
    });

    await t.step("an id of the wrong shape is a 404 too", async () => {
      const response = await app.request("/conversations/not-an-id");
      assert.equal(response.status, 404);
      await response.body?.cancel();
    });
  } finally {
    kv.close();
  }
});

Deno.test("without KV, /conversations says so with a 503", async () => {
  const app = await replayApp();
  const response = await app.request("/conversations", { method: "POST" });
  assert.equal(response.status, 503);
  assert.equal((await response.json()).error.type, "api_error");
});

Deno.test("a key lists its own conversations, page by page, and nobody else's", async (t) => {
  await t.step("the store pages through an owner's live conversations by cursor", async () => {
    await withStore(LIMITS, async (store, clock) => {
      const mine = [];
      for (let i = 0; i < 5; i++) mine.push((await store.create("owner-a")).id);
      await store.create("owner-b");
      const expiring = await store.create("owner-a");
      clock.advance(HOUR - 1);
      for (const id of mine) await store.append("owner-a", id, exchange(1)); // keeps them alive
      clock.advance(2); // `expiring` is past its time; KV has not deleted it yet
      const listed: string[] = [];
      let cursor: string | undefined;
      let pages = 0;
      do {
        const page = await store.list("owner-a", { limit: 2, cursor });
        listed.push(...page.conversations.map((c) => c.id));
        cursor = page.nextCursor ?? undefined;
        pages++;
      } while (cursor);
      assert.deepEqual(listed.sort(), [...mine].sort());
      assert.ok(!listed.includes(expiring.id));
      assert.equal(pages, 3, "6 entries (one expired) in pages of 2");
      assert.deepEqual((await store.list("owner-c", { limit: 2 })).conversations, []);
      await assert.rejects(store.list("owner-a", { limit: 2, cursor: "zzz" }), InvalidCursorError);
      // A string KV can decode is only a position, and only ever within the owner's prefix.
      const forged = await store.list("owner-a", { limit: 10, cursor: "AAAA" });
      for (const c of forged.conversations) assert.ok(mine.includes(c.id));
    });
  });

  const kv = await Deno.openKv(":memory:");
  try {
    const app = await replayApp({
      kv,
      config: testConfig({ SLUICE_API_KEYS: "key-alice,key-bob" }),
    });
    const as = (key: string, path: string, init: RequestInit = {}) =>
      app.request(path, { ...init, headers: { ...init.headers, "x-api-key": key } });
    const created: string[] = [];
    for (let i = 0; i < 3; i++) {
      const response = await as("key-alice", "/conversations", { method: "POST" });
      created.push((await response.json()).id);
    }
    await (await as("key-bob", "/conversations", { method: "POST" })).body?.cancel();
    const chat = await as("key-alice", "/chat", {
      method: "POST",
      body: JSON.stringify({
        conversation_id: created[0],
        message: "Tell me about sluice",
        stream: false,
      }),
    });
    assert.equal(chat.status, 200);
    await chat.body?.cancel();

    await t.step(
      "GET /conversations shows the caller's, with a title and a message count",
      async () => {
        const response = await as("key-alice", "/conversations?limit=100");
        assert.equal(response.status, 200);
        const body = await response.json();
        assert.deepEqual(body.data.map((c: { id: string }) => c.id).sort(), [...created].sort());
        assert.equal(body.has_more, false);
        assert.equal(body.next_cursor, null);
        const talked = body.data.find((c: { id: string }) => c.id === created[0]);
        assert.equal(talked.title, "Tell me about sluice");
        assert.equal(talked.message_count, 2);
        assert.equal(talked.messages, undefined, "the list carries no messages");
        const bob = await (await as("key-bob", "/conversations")).json();
        assert.equal(bob.data.length, 1);
        assert.ok(!created.includes(bob.data[0].id));
      },
    );

    await t.step("limit and next_cursor page through them", async () => {
      const first = await (await as("key-alice", "/conversations?limit=2")).json();
      assert.equal(first.data.length, 2);
      assert.equal(first.has_more, true);
      const cursor = encodeURIComponent(first.next_cursor);
      const second = await (await as("key-alice", `/conversations?limit=2&cursor=${cursor}`))
        .json();
      assert.equal(second.data.length, 1);
      assert.equal(second.has_more, false);
      const ids = [...first.data, ...second.data].map((c: { id: string }) => c.id).sort();
      assert.deepEqual(ids, [...created].sort());
    });

    await t.step("a bad limit or cursor is a 400 in Anthropic's shape", async () => {
      for (const query of ["limit=0", "limit=101", "limit=abc", "cursor=", "cursor=zzz", "x=1"]) {
        const response = await as("key-alice", `/conversations?${query}`);
        assert.equal(response.status, 400, query);
        const body = await response.json();
        assert.equal(body.error.type, "invalid_request_error", query);
        // It names the query string, never a body the request did not have.
        assert.doesNotMatch(body.error.message, /^body/, query);
      }
      const unknown = await (await as("key-alice", "/conversations?x=1")).json();
      assert.match(unknown.error.message, /^query: Unrecognized key: "x"/);
    });

    await t.step("without a gateway key, no list", async () => {
      const response = await app.request("/conversations");
      assert.equal(response.status, 401);
      await response.body?.cancel();
    });
  } finally {
    kv.close();
  }
});

Deno.test("what one key keeps is capped: conversations, bytes of them, and the rate it creates them", async (t) => {
  const kv = await Deno.openKv(":memory:");
  try {
    const app = await replayApp({
      kv,
      config: testConfig({
        SLUICE_CONVERSATIONS_PER_KEY: "3",
        SLUICE_CONVERSATION_BYTES_PER_KEY: "5000",
      }),
    });
    const create = (key: string, system = "short") =>
      app.request("/conversations", {
        method: "POST",
        headers: { "x-api-key": key, "content-type": "application/json" },
        body: JSON.stringify({ system }),
      });
    const ids: string[] = [];
    await t.step(
      "up to the count limit, then a 403 permission_error naming the setting",
      async () => {
        for (let i = 0; i < 3; i++) {
          const response = await create("key-a");
          assert.equal(response.status, 201, `conversation ${i + 1}`);
          ids.push((await response.json()).id);
        }
        // Created at once, they still cannot pass the limit together.
        const burst = await Promise.all(Array.from({ length: 20 }, () => create("key-a")));
        for (const refused of burst) {
          assert.equal(refused.status, 403);
          const body = await refused.json();
          assert.equal(body.type, "error");
          assert.equal(body.error.type, "permission_error");
          assert.match(body.error.message, /SLUICE_CONVERSATIONS_PER_KEY/);
        }
        assert.equal((await create("key-b")).status, 201, "another key has its own budget");
      },
    );
    await t.step("a deleted one frees its place", async () => {
      const gone = await app.request(`/conversations/${ids[0]}`, {
        method: "DELETE",
        headers: { "x-api-key": "key-a" },
      });
      assert.equal(gone.status, 204);
      assert.equal((await create("key-a")).status, 201);
    });
    await t.step("over the bytes limit, a 413 request_too_large naming the setting", async () => {
      assert.equal((await create("key-c", "s".repeat(2000))).status, 201);
      assert.equal((await create("key-c", "s".repeat(2000))).status, 201);
      const refused = await create("key-c", "s".repeat(2000));
      assert.equal(refused.status, 413);
      const body = await refused.json();
      assert.equal(body.error.type, "request_too_large");
      assert.match(body.error.message, /SLUICE_CONVERSATION_BYTES_PER_KEY/);
      assert.equal((await create("key-c", "small")).status, 201, "a small one still fits");
    });
  } finally {
    kv.close();
  }
  await t.step("creating and deleting count against the per-minute rate limit", async () => {
    const limitedKv = await Deno.openKv(":memory:");
    try {
      const app = await replayApp({
        kv: limitedKv,
        config: testConfig({ SLUICE_RATE_LIMIT_RPM: "2" }),
      });
      const headers = { "x-api-key": "key-r" };
      const first = await app.request("/conversations", { method: "POST", headers });
      assert.equal(first.status, 201);
      const { id } = await first.json();
      assert.equal(
        (await app.request(`/conversations/${id}`, { method: "DELETE", headers })).status,
        204,
      );
      const refused = await app.request("/conversations", { method: "POST", headers });
      assert.equal(refused.status, 429);
      assert.equal((await refused.json()).error.type, "rate_limit_error");
      assert.ok(Number(refused.headers.get("retry-after")) > 0);
      // Reading is not writing: a list is not limited.
      assert.equal((await app.request("/conversations", { headers })).status, 200);
    } finally {
      limitedKv.close();
    }
  });
});
