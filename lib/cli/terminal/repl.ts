/**
 * The terminal client's loop: prompt, send, stream the answer, print the stats, repeat. All
 * input and output go through {@link TerminalIO}, so the loop runs the same in a terminal
 * (lib/cli/chat.ts) and in a test with a scripted input.
 */
import type { ChatClientOptions } from "./client.ts";
import { ChatApiError, createConversation, streamChat } from "./client.ts";
import type { ChatDone } from "../../chat/encoding.ts";
import type { Styles } from "./terminal.ts";
import { isQuit, SPINNER_CLEAR, spinnerFrame, statsText, styles } from "./terminal.ts";
import { createTerminalMarkdown } from "./markdown.ts";
import { createAnswerPrinter } from "./answer_printer.ts";

/** What the loop reads from and writes to. */
export interface TerminalIO {
  /** The next line typed, without its newline; null at end of input (Ctrl-D). */
  readLine(): Promise<string | null>;
  write(text: string): void;
  /** Calls `handler` on each Ctrl-C (SIGINT) until the returned function is called. */
  onInterrupt(handler: () => void): () => void;
}

/** Options for {@link runChat}. */
export interface RunChatOptions extends ChatClientOptions {
  io: TerminalIO;
  color: boolean;
  /** Animate a spinner until the first token (terminals only). */
  spinner: boolean;
  /**
   * Redraw the answer's open markdown block in place as it grows (terminals only; default:
   * `spinner`). Otherwise each block is written once it is complete.
   */
  live?: boolean;
  /** The terminal's size, read at each answer (default 80x24). */
  size?: () => { columns: number; rows: number };
  model?: string;
  system?: string;
  /** Spinner frame interval, in ms. */
  spinnerMs?: number;
  /** Milliseconds for telling signals apart; `performance.now` by default. */
  now?: () => number;
}

const DOUBLE_SIGNAL_MS = 250;
/**
 * After a Ctrl-C stopped an answer, a second signal this soon is the same key press forwarded
 * again (`deno task` passes SIGINT on to its child, late on a busy machine), not a request to
 * leave: it would print a stray prompt line under `[stopped]`.
 */
const AFTER_STOP_MS = 1000;

/**
 * Runs the chat until the user leaves. Returns the exit code: 0 after quit/exit/Ctrl-D, 1 when
 * sluice cannot be reached at start.
 */
export async function runChat(options: RunChatOptions): Promise<number> {
  const { io } = options;
  const s = styles(options.color);
  const client: ChatClientOptions = { url: options.url, key: options.key, fetch: options.fetch };

  // A conversation on the server keeps the history; without one (no KV there), we keep it here.
  let conversationId: string | null;
  try {
    conversationId = await createConversation(client, { system: options.system });
  } catch (error) {
    io.write(s.error(`cannot start a conversation at ${options.url}: ${describe(error)}`) + "\n");
    return 1;
  }
  const session: ChatSession = { conversationId, local: [] };

  io.write(
    `${s.claude("sluice chat")} ${s.dim(`· ${options.url}`)}\n` +
      s.dim("Type a message. Ctrl-C stops an answer; quit, exit or Ctrl-D leaves.") + "\n\n",
  );

  const prompt: PromptState = { current: null, interruptsAtPrompt: 0, wake: null };
  const stop = io.onInterrupt(interruptHandler(options, s, prompt));

  try {
    for (;;) {
      io.write(`${s.you("You:")} `);
      const line = await Promise.race([
        io.readLine(),
        new Promise<null>((resolve) => (prompt.wake = () => resolve(null))),
      ]);
      prompt.wake = null;
      if (line === null || isQuit(line)) {
        io.write(`${line === null ? "\n" : ""}Goodbye!\n`);
        return 0;
      }
      prompt.interruptsAtPrompt = 0;
      const message = line.trim();
      if (message === "") continue;

      const current = prompt.current = new AbortController();
      try {
        await exchange(options, s, client, session, message, current.signal);
      } catch (error) {
        if (current.signal.aborted) {
          io.write(`${s.dim("[stopped]")}\n\n`);
        } else {
          io.write(`${s.error(`[error] ${describe(error)}`)}\n\n`);
        }
      } finally {
        prompt.current = null;
      }
    }
  } finally {
    stop();
  }
}

/** The history of a chat: the server's conversation, or (without one) the turns kept here. */
interface ChatSession {
  conversationId: string | null;
  local: { role: "user" | "assistant"; content: string }[];
}

/** What a Ctrl-C acts on: the answer being streamed, else the prompt waiting for a line. */
interface PromptState {
  current: AbortController | null;
  interruptsAtPrompt: number;
  /** Ends the wait for a line (a second Ctrl-C at the prompt leaves). */
  wake: (() => void) | null;
}

/** Ctrl-C: stops the answer being streamed; at the prompt, explains, then leaves. */
function interruptHandler(options: RunChatOptions, s: Styles, prompt: PromptState): () => void {
  const { io } = options;
  const now = options.now ?? (() => performance.now());
  let lastInterrupt = -Infinity;
  let lastStop = -Infinity;
  return () => {
    // One Ctrl-C can arrive twice: the terminal signals the whole foreground group, and
    // `deno task` also forwards it to its child. Signals this close together are one key press.
    const at = now();
    if (at - lastInterrupt < DOUBLE_SIGNAL_MS || at - lastStop < AFTER_STOP_MS) return;
    lastInterrupt = at;
    if (prompt.current) {
      lastStop = at;
      prompt.current.abort();
      return;
    }
    // At the prompt: a first Ctrl-C explains, a second one in a row leaves.
    prompt.interruptsAtPrompt++;
    if (prompt.interruptsAtPrompt >= 2) {
      prompt.wake?.();
      return;
    }
    io.write(`\n${s.dim("(Ctrl-C again, quit or Ctrl-D to leave)")}\n${s.you("You:")} `);
  };
}

/** Sends one message and streams its answer, then its stats; the history keeps the exchange. */
async function exchange(
  options: RunChatOptions,
  s: Styles,
  client: ChatClientOptions,
  session: ChatSession,
  message: string,
  signal: AbortSignal,
): Promise<void> {
  const { io } = options;
  const request = session.conversationId
    ? { message, conversation_id: session.conversationId, model: options.model }
    : {
      messages: [...session.local, { role: "user", content: message }],
      model: options.model,
      system: options.system,
    };
  let answer = "";
  const done = await answerOnce(options, s, client, request, signal, (text) => {
    answer += text;
  }).catch(async (error) => {
    // The server forgot the conversation (expired): start a new one and ask again, once.
    if (error instanceof ChatApiError && error.status === 404 && session.conversationId) {
      io.write(s.dim("(the conversation expired; starting a new one)") + "\n");
      session.conversationId = await createConversation(client, { system: options.system });
      if (session.conversationId) {
        return await answerOnce(
          options,
          s,
          client,
          {
            message,
            conversation_id: session.conversationId,
            model: options.model,
          },
          signal,
          (text) => (answer += text),
        );
      }
    }
    throw error;
  });
  if (!session.conversationId) {
    session.local.push({ role: "user", content: message }, { role: "assistant", content: answer });
  }
  io.write(`${s.dim(statsText(done))}\n\n`);
}

/**
 * Streams one answer to the terminal: the label, a spinner until the first token, then the
 * answer as markdown from the next line, ending on a line of its own.
 */
async function answerOnce(
  options: RunChatOptions,
  s: Styles,
  client: ChatClientOptions,
  request: Parameters<typeof streamChat>[1],
  signal: AbortSignal,
  collect: (text: string) => void,
): Promise<ChatDone> {
  const { io } = options;
  io.write(s.claude("Claude:"));
  let frame = 0;
  let spinning = options.spinner;
  let timer: ReturnType<typeof setInterval> | undefined;
  if (spinning) {
    io.write(" " + spinnerFrame(frame++));
    timer = setInterval(() => io.write(spinnerFrame(frame++)), options.spinnerMs ?? 80);
  }
  let started = false;
  const start = () => {
    if (started) return;
    started = true;
    if (spinning) {
      spinning = false;
      clearInterval(timer);
      // The spinner goes, then the space before it (erased, so no trailing blank is left).
      io.write(`${SPINNER_CLEAR}\b\x1b[K`);
    }
    io.write("\n");
  };
  const size = options.size?.() ?? { columns: 80, rows: 24 };
  const printer = createAnswerPrinter({
    write: io.write,
    markdown: createTerminalMarkdown({ color: options.color, width: size.columns - 1 }),
    live: options.live ?? options.spinner,
    columns: size.columns,
    rows: size.rows,
    dim: s.dim,
  });
  let finished = false;
  try {
    const done = await streamChat(client, request, {
      signal,
      onText(text) {
        start();
        printer.append(text);
        collect(text);
      },
      onReconnecting(attempt) {
        start();
        printer.status(attempt === 0 ? "" : `(connection lost; reconnecting, try ${attempt}…)`);
      },
    });
    start();
    printer.end();
    finished = true;
    return done;
  } finally {
    if (!finished) {
      start();
      printer.stop();
    }
  }
}

function describe(error: unknown): string {
  if (error instanceof ChatApiError) return `${error.type}: ${error.message}`;
  if (error instanceof TypeError) return `cannot reach sluice (${error.message})`;
  return error instanceof Error ? error.message : String(error);
}
