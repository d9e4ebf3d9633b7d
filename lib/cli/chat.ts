/**
 * `deno task chat`: the terminal client. Wiring only (arguments, the terminal, signals); the
 * loop is lib/cli/terminal/repl.ts.
 */
import { runChat } from "./terminal/repl.ts";
import type { TerminalIO } from "./terminal/repl.ts";
import { colorEnabled, parseChatArgs, USAGE, UsageError } from "./terminal/terminal.ts";

/** Reads stdin line by line. */
function lineReader(input: ReadableStream<Uint8Array>): () => Promise<string | null> {
  const reader = input.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let ended = false;
  return async () => {
    for (;;) {
      const newline = buffer.indexOf("\n");
      if (newline >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        return line;
      }
      if (ended) {
        if (buffer === "") return null;
        const rest = buffer;
        buffer = "";
        return rest;
      }
      const { value, done } = await reader.read();
      if (done) ended = true;
      else buffer += value;
    }
  };
}

function writer(): (text: string) => void {
  const encoder = new TextEncoder();
  return (text) => {
    let bytes = encoder.encode(text);
    while (bytes.length > 0) bytes = bytes.subarray(Deno.stdout.writeSync(bytes));
  };
}

if (import.meta.main) {
  const env = Deno.env.toObject();
  let options;
  try {
    options = parseChatArgs(Deno.args, env);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`${error.message}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (options.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const terminal = Deno.stdout.isTerminal();
  const io: TerminalIO = {
    readLine: lineReader(Deno.stdin.readable),
    write: writer(),
    onInterrupt(handler) {
      Deno.addSignalListener("SIGINT", handler);
      return () => Deno.removeSignalListener("SIGINT", handler);
    },
  };
  const code = await runChat({
    url: options.url,
    key: options.key,
    model: options.model,
    system: options.system,
    io,
    color: colorEnabled(terminal, env),
    spinner: terminal && env.TERM !== "dumb",
    size: () => {
      try {
        return Deno.consoleSize();
      } catch {
        return { columns: 80, rows: 24 }; // not a terminal
      }
    },
  });
  // A read of stdin may still be pending (leaving by Ctrl-C); exit rather than wait for it.
  Deno.exit(code);
}
