/**
 * Conversations: the history `/chat` sends upstream, kept in Deno KV under the gateway key that
 * made it.
 *
 * A conversation is one KV value, keyed `["sluice", "conversations", owner, id]`: putting the owner (a key
 * id, never a key) in the KV key means another key's lookup simply finds nothing, so it cannot
 * tell a foreign conversation from a missing one. The value is the conversation's JSON as UTF-8
 * bytes, so its size is exactly what the byte bound counts (KV caps a value at 64 KiB; a JS
 * object's stored size depends on V8's string encoding, which would make the bound approximate).
 *
 * Turns are stored in user/assistant pairs, and only once the answer is complete: an exchange
 * that failed or was stopped leaves the conversation as it was. When a bound is exceeded the
 * oldest pairs are dropped, so the history always starts with a user turn and alternates.
 */
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";

/** One message of the history. */
export interface Turn {
  role: "user" | "assistant";
  content: string;
  /**
   * An assistant turn whose answer was cut (the instance writing it died): what was buffered,
   * marked so. Never sent upstream as a field (only role and content are).
   */
  incomplete?: true;
}

/** A stored conversation. Times are epoch milliseconds. */
export interface Conversation {
  id: string;
  createdAt: number;
  updatedAt: number;
  /** After this, the conversation is gone (KV's `expireIn` deletes it; reads ignore it sooner). */
  expiresAt: number;
  /** Defaults for `/chat` on this conversation. */
  system?: string;
  model?: string;
  turns: Turn[];
  /** How many turns were dropped to keep within the bounds. */
  droppedTurns: number;
}

/** The bounds of one conversation. */
export interface ConversationLimits {
  /** Most turns kept (user and assistant messages). */
  maxTurns: number;
  /** Most bytes of the stored value (UTF-8 JSON of the whole conversation). */
  maxBytes: number;
  /** How long a conversation lives after its last change, in ms. */
  ttlMs: number;
  /** Most live conversations one owner (gateway key) may keep; 0: no limit. */
  maxPerOwner?: number;
  /** Most bytes all of one owner's live conversations may take together; 0: no limit. */
  maxBytesPerOwner?: number;
}

/** What {@link ConversationStore.append} did. */
export type AppendResult =
  | { status: "stored"; conversation: Conversation }
  | { status: "missing" }
  | { status: "too_large" };

/** The conversation store. `owner` is the caller's key id. */
export interface ConversationStore {
  create(owner: string, init?: { system?: string; model?: string }): Promise<Conversation>;
  /** The conversation, or null when it does not exist, has expired, or belongs to another key. */
  get(owner: string, id: string): Promise<Conversation | null>;
  /** Appends an exchange (a user turn and its answer), dropping the oldest pairs to fit. */
  append(owner: string, id: string, exchange: [Turn, Turn]): Promise<AppendResult>;
  /** Deletes the conversation; false when there was none. */
  delete(owner: string, id: string): Promise<boolean>;
  /**
   * The owner's live conversations, a page of at most `limit` in id order, and the cursor of the
   * next page (null on the last). `cursor` comes from an earlier page. One KV cannot decode
   * throws {@link InvalidCursorError}; any other string is only a position, and KV applies it
   * within the owner's own prefix, so no cursor reaches another key's conversations.
   */
  list(
    owner: string,
    options: { limit: number; cursor?: string },
  ): Promise<{ conversations: Conversation[]; nextCursor: string | null }>;
}

/** Raised by `list` for a cursor KV does not accept. */
export class InvalidCursorError extends Error {
  constructor() {
    super("the cursor is not one this server gave out");
    this.name = "InvalidCursorError";
  }
}

/** A conversation's entry in the owner's usage: its stored size and expiry. */
interface Size {
  bytes: number;
  expiresAt: number;
}

/** Options for {@link createConversationStore}. */
export interface ConversationStoreOptions {
  kv: Deno.Kv;
  limits: ConversationLimits;
  clock?: Clock;
  /** Makes new ids; defaults to 128 random bits. */
  newId?: () => string;
}

/**
 * Raised by `create` when the owner already keeps as many conversations (`count`) or bytes of
 * them (`bytes`) as its limits allow.
 */
export class ConversationQuotaError extends Error {
  readonly kind: "count" | "bytes";
  constructor(kind: "count" | "bytes", message: string) {
    super(message);
    this.name = "ConversationQuotaError";
    this.kind = kind;
  }
}

/** Raised by `create` when the conversation would not fit its byte bound even when empty. */
export class ConversationTooLargeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConversationTooLargeError";
  }
}

const ID_PATTERN = /^conv_[0-9a-f]{32}$/;
// Under sluice's one prefix, beside stats and limits, so one KV database can be shared.
const PREFIX = ["sluice", "conversations"] as const;
// Each conversation's stored size and expiry, beside it: an owner's usage is a list of these
// small entries, never of the conversations themselves.
const SIZES = ["sluice", "conversation_sizes"] as const;
// Conflicting writers (two answers finishing at once) retry this many times.
const MAX_ATTEMPTS = 8;

/** True when `id` has the shape of a conversation id (so junk never becomes a KV key). */
export function isConversationId(id: string): boolean {
  return ID_PATTERN.test(id);
}

/** A new random conversation id: `conv_` and 32 hex digits. */
export function newConversationId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `conv_${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** The stored form of a conversation. */
export function encodeConversation(conversation: Conversation): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(conversation));
}

/**
 * Drops the oldest user/assistant pairs until the conversation fits `limits`. Returns null when
 * even the newest pair alone does not fit.
 */
export function fitConversation(
  conversation: Conversation,
  limits: Pick<ConversationLimits, "maxTurns" | "maxBytes">,
): Conversation | null {
  const fitted = { ...conversation, turns: [...conversation.turns] };
  const fits = () =>
    fitted.turns.length <= limits.maxTurns &&
    encodeConversation(fitted).length <= limits.maxBytes;
  while (!fits()) {
    if (fitted.turns.length <= 2) return null;
    fitted.turns.splice(0, 2);
    fitted.droppedTurns += 2;
  }
  return fitted;
}

/** Creates a store over `kv`. */
export function createConversationStore(options: ConversationStoreOptions): ConversationStore {
  const { kv, limits } = options;
  const store: StoreState = {
    kv,
    limits,
    clock: options.clock ?? systemClock,
    newId: options.newId ?? newConversationId,
    maxPerOwner: limits.maxPerOwner ?? 0,
    maxBytesPerOwner: limits.maxBytesPerOwner ?? 0,
    creating: new Map(),
  };
  return {
    create(owner, init = {}) {
      return oneAtATime(store, owner, () => createNow(store, owner, init));
    },

    async get(owner, id) {
      return (await read(store, owner, id))?.conversation ?? null;
    },

    append(owner, id, exchange) {
      return append(store, owner, id, exchange);
    },

    async delete(owner, id) {
      const found = await read(store, owner, id);
      if (!found) return false;
      await kv.atomic().delete(keyOf(owner, id)).delete(sizeKeyOf(owner, id)).commit();
      return true;
    },

    list(owner, page) {
      return listPage(store, owner, page);
    },
  };
}

/** What one store keeps: its settings and the creations running now. */
interface StoreState {
  kv: Deno.Kv;
  limits: ConversationLimits;
  clock: Clock;
  newId: () => string;
  maxPerOwner: number;
  maxBytesPerOwner: number;
  // Creations of one owner run one at a time in this isolate, so a burst of them cannot all
  // pass the check before any is written (isolates sharing a KV can still overshoot a little).
  creating: Map<string, Promise<unknown>>;
}

function keyOf(owner: string, id: string): Deno.KvKey {
  return [...PREFIX, owner, id];
}

function sizeKeyOf(owner: string, id: string): Deno.KvKey {
  return [...SIZES, owner, id];
}

/** The owner's live conversations other than `except`: how many, and their bytes. */
async function usage(store: StoreState, owner: string, except?: string) {
  let count = 0;
  let bytes = 0;
  const now = store.clock.now();
  for await (const entry of store.kv.list<Size>({ prefix: [...SIZES, owner] })) {
    if (entry.value.expiresAt <= now || entry.key.at(-1) === except) continue;
    count++;
    bytes += entry.value.bytes;
  }
  return { count, bytes };
}

/** Refuses a new conversation of `size` bytes when the owner's limits are reached. */
async function checkQuota(store: StoreState, owner: string, size: number) {
  const { maxPerOwner, maxBytesPerOwner } = store;
  if (maxPerOwner <= 0 && maxBytesPerOwner <= 0) return;
  const used = await usage(store, owner);
  if (maxPerOwner > 0 && used.count >= maxPerOwner) {
    throw new ConversationQuotaError(
      "count",
      `this key already keeps ${used.count} conversations, the limit ` +
        `(SLUICE_CONVERSATIONS_PER_KEY); delete one or wait for one to expire`,
    );
  }
  if (maxBytesPerOwner > 0 && used.bytes + size > maxBytesPerOwner) {
    throw new ConversationQuotaError(
      "bytes",
      `this key's conversations take ${used.bytes} bytes; ${size} more would pass the limit ` +
        `of ${maxBytesPerOwner} (SLUICE_CONVERSATION_BYTES_PER_KEY)`,
    );
  }
}

/** Runs `work` after the owner's earlier creations. */
function oneAtATime<T>(store: StoreState, owner: string, work: () => Promise<T>): Promise<T> {
  const { creating } = store;
  const before = creating.get(owner) ?? Promise.resolve();
  const run = before.then(work, work);
  const settled = run.then(() => {}, () => {});
  creating.set(owner, settled);
  settled.then(() => {
    if (creating.get(owner) === settled) creating.delete(owner);
  });
  return run;
}

async function read(store: StoreState, owner: string, id: string) {
  if (!isConversationId(id)) return null;
  const entry = await store.kv.get<Uint8Array>(keyOf(owner, id));
  if (entry.value === null) return null;
  const conversation = JSON.parse(new TextDecoder().decode(entry.value)) as Conversation;
  // KV deletes expired keys eventually, not at once; an expired one is already gone to callers.
  if (conversation.expiresAt <= store.clock.now()) return null;
  return { entry, conversation };
}

function touched(store: StoreState, conversation: Conversation): Conversation {
  const now = store.clock.now();
  return { ...conversation, updatedAt: now, expiresAt: now + store.limits.ttlMs };
}

async function createNow(
  store: StoreState,
  owner: string,
  init: { system?: string; model?: string },
) {
  const { kv, limits } = store;
  const now = store.clock.now();
  const conversation: Conversation = {
    id: store.newId(),
    createdAt: now,
    updatedAt: now,
    expiresAt: now + limits.ttlMs,
    ...(init.system !== undefined ? { system: init.system } : {}),
    ...(init.model !== undefined ? { model: init.model } : {}),
    turns: [],
    droppedTurns: 0,
  };
  const bytes = encodeConversation(conversation);
  if (bytes.length > limits.maxBytes) {
    throw new ConversationTooLargeError(
      `the conversation would take ${bytes.length} bytes before any message; ` +
        `the limit is ${limits.maxBytes} (SLUICE_CONVERSATION_MAX_BYTES)`,
    );
  }
  await checkQuota(store, owner, bytes.length);
  const size: Size = { bytes: bytes.length, expiresAt: conversation.expiresAt };
  const result = await kv.atomic()
    .check({ key: keyOf(owner, conversation.id), versionstamp: null })
    .set(keyOf(owner, conversation.id), bytes, { expireIn: limits.ttlMs })
    .set(sizeKeyOf(owner, conversation.id), size, { expireIn: limits.ttlMs })
    .commit();
  if (!result.ok) throw new Error("conversation id collision");
  return conversation;
}

/** {@link ConversationStore.append}. */
async function append(
  store: StoreState,
  owner: string,
  id: string,
  exchange: [Turn, Turn],
): Promise<AppendResult> {
  const { kv, limits, maxBytesPerOwner } = store;
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const found = await read(store, owner, id);
    if (!found) return { status: "missing" };
    const next = fitConversation(
      touched(store, { ...found.conversation, turns: [...found.conversation.turns, ...exchange] }),
      limits,
    );
    if (!next) return { status: "too_large" };
    const bytes = encodeConversation(next);
    if (maxBytesPerOwner > 0) {
      // The owner's other conversations and this one, grown, must fit the owner's budget.
      const others = await usage(store, owner, id);
      if (others.bytes + bytes.length > maxBytesPerOwner) return { status: "too_large" };
    }
    const size: Size = { bytes: bytes.length, expiresAt: next.expiresAt };
    const result = await kv.atomic()
      .check(found.entry)
      .set(keyOf(owner, id), bytes, { expireIn: limits.ttlMs })
      .set(sizeKeyOf(owner, id), size, { expireIn: limits.ttlMs })
      .commit();
    if (result.ok) return { status: "stored", conversation: next };
  }
  throw new Error(`conversation ${id} kept changing; gave up after ${MAX_ATTEMPTS} attempts`);
}

/** {@link ConversationStore.list}. */
async function listPage(
  store: StoreState,
  owner: string,
  { limit, cursor }: { limit: number; cursor?: string },
): Promise<{ conversations: Conversation[]; nextCursor: string | null }> {
  // One entry more than the page, to know whether there is a next page; the page's cursor is
  // the one after its last entry. Expired entries (not yet deleted by KV) are skipped.
  const iter = store.kv.list<Uint8Array>({ prefix: [...PREFIX, owner] }, {
    limit: limit + 1,
    cursor,
  });
  const conversations: Conversation[] = [];
  let seen = 0;
  let pageCursor = "";
  let nextCursor: string | null = null;
  try {
    for await (const entry of iter) {
      if (++seen > limit) {
        nextCursor = pageCursor;
        break;
      }
      pageCursor = iter.cursor;
      const conversation = JSON.parse(new TextDecoder().decode(entry.value)) as Conversation;
      if (conversation.expiresAt > store.clock.now()) conversations.push(conversation);
    }
  } catch (error) {
    if (cursor !== undefined && seen === 0) throw new InvalidCursorError();
    throw error;
  }
  return { conversations, nextCursor };
}

/** A conversation's times as the JSON views show them (ISO 8601). */
function timesJson(conversation: Conversation) {
  return {
    created_at: new Date(conversation.createdAt).toISOString(),
    updated_at: new Date(conversation.updatedAt).toISOString(),
    expires_at: new Date(conversation.expiresAt).toISOString(),
  };
}

/** One conversation in the list (`GET /conversations`): its metadata, not its messages. */
export function conversationSummaryJson(conversation: Conversation) {
  const first = conversation.turns.find((turn) => turn.role === "user")?.content ?? null;
  return {
    id: conversation.id,
    ...timesJson(conversation),
    model: conversation.model ?? null,
    message_count: conversation.turns.length,
    dropped_turns: conversation.droppedTurns,
    // The first kept user message, shortened: enough to tell conversations apart in a list.
    title: first === null ? null : first.length > 80 ? first.slice(0, 79) + "…" : first,
  };
}

/** The public JSON view of a conversation (`GET /conversations/:id`). */
export function conversationJson(conversation: Conversation) {
  return {
    id: conversation.id,
    ...timesJson(conversation),
    system: conversation.system ?? null,
    model: conversation.model ?? null,
    messages: conversation.turns,
    dropped_turns: conversation.droppedTurns,
    bytes: encodeConversation(conversation).length,
  };
}

/** The bounds from the configuration. */
export function conversationLimits(
  config: { conversation: ConversationSettings },
): ConversationLimits {
  const { maxTurns, maxBytes, ttlHours, maxPerKey, maxBytesPerKey } = config.conversation;
  return {
    maxTurns,
    maxBytes,
    ttlMs: Math.round(ttlHours * 3_600_000),
    maxPerOwner: maxPerKey,
    maxBytesPerOwner: maxBytesPerKey,
  };
}

/** The conversation settings of the configuration. */
export interface ConversationSettings {
  maxTurns: number;
  maxBytes: number;
  ttlHours: number;
  /** Conversations per gateway key (0: no limit). */
  maxPerKey?: number;
  /** Bytes of all of a gateway key's conversations (0: no limit). */
  maxBytesPerKey?: number;
}

/** The conversation store for an app's dependencies, or undefined when the app has no KV. */
export function conversationStoreFor(
  deps: {
    kv?: Deno.Kv;
    clock: Clock;
    config: { conversation: ConversationSettings };
  },
): ConversationStore | undefined {
  if (!deps.kv) return undefined;
  return createConversationStore({
    kv: deps.kv,
    limits: conversationLimits(deps.config),
    clock: deps.clock,
  });
}
