/**
 * A small leveled logger that writes one line per entry and scrubs secrets. Lines are text
 * (`TIME LEVEL message {fields}`) or, with `format: "json"` (`SLUICE_LOG_FORMAT=json`), one JSON
 * object each: `{"time","level","msg",...fields}`, for log collectors that parse JSON.
 *
 * Every line passes through `redact`, so a secret that slips into a message (an upstream error
 * that echoes a header, say) is replaced before it reaches the console.
 */

/** Log levels, in increasing severity. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

/** Where sluice writes what happens. */
export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3, silent: 4 };

/** Options for {@link createLogger}. */
export interface LoggerOptions {
  level?: LogLevel;
  /** Strings that must never be printed (API keys). */
  secrets?: (string | undefined)[];
  /** `text` (default) or `json`: one JSON object per line. */
  format?: "text" | "json";
  /** Where lines go; defaults to the console. */
  write?: (level: Exclude<LogLevel, "silent">, line: string) => void;
}

/** Creates a logger. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const threshold = ORDER[options.level ?? "info"];
  const secrets = (options.secrets ?? []).filter((s): s is string => !!s && s.length >= 4);
  const write = options.write ?? ((level, line) => {
    if (level === "error") console.error(line);
    else if (level === "warn") console.warn(line);
    else console.log(line);
  });
  const redact = (text: string) => secrets.reduce((t, s) => t.split(s).join("[redacted]"), text);
  const log =
    (level: Exclude<LogLevel, "silent">) => (message: string, fields?: Record<string, unknown>) => {
      if (ORDER[level] < threshold) return;
      const time = new Date().toISOString();
      if (options.format === "json") {
        write(level, redact(safeJson({ time, level, msg: message, ...fields })));
        return;
      }
      const extra = fields && Object.keys(fields).length ? " " + safeJson(fields) : "";
      write(level, redact(`${time} ${level.toUpperCase()} ${message}${extra}`));
    };
  return { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") };
}

/** A logger that drops everything (tests). */
export const silentLogger: Logger = createLogger({ level: "silent" });

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value, (_key, v) => (v instanceof Error ? v.message : v));
  } catch {
    return String(value);
  }
}
