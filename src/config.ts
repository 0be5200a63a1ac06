import { availableParallelism } from "node:os";
import { parseDatabaseUrl } from "./storage/database.js";
import type { DatabaseTarget } from "./storage/database.js";
import type { ErrorMessages } from "./http/errors.js";

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

export interface Config {
  readonly host: string;
  readonly port: number;
  readonly database: DatabaseTarget;
  readonly databasePoolSize: number;
  readonly databaseLockTimeoutMs: number;
  readonly sqliteSynchronous: "full" | "normal";
  readonly logLevel: LogLevel;
  readonly errorMessages: ErrorMessages;
  readonly redisUrl: string | null;
  readonly cache: "on" | "off";
  readonly cacheTtlSeconds: number;
  readonly cachePrefix: string;
  readonly cacheMaxEntries: number;
  readonly cacheTimeoutMs: number;
  readonly workers: number;
  readonly shutdownTimeoutMs: number;
}

/** One configuration variable: its default and how to read it (throwing a message when bad). */
interface Variable<K extends keyof Config> {
  readonly name: string;
  readonly key: K;
  readonly default: string;
  readonly meaning: string;
  readonly parse: (value: string) => Config[K];
}

function integer(min: number, max: number): (value: string) => number {
  return (value) => {
    if (!/^[0-9]+$/.test(value)) {
      throw new Error(`must be a whole number from ${min} to ${max}`);
    }
    const n = Number(value);
    if (n < min || n > max) {
      throw new Error(`must be a whole number from ${min} to ${max}`);
    }
    return n;
  };
}

function oneOf<T extends string>(...allowed: T[]): (value: string) => T {
  return (value) => {
    if (!(allowed as string[]).includes(value)) {
      throw new Error(`must be one of ${allowed.join(", ")}`);
    }
    return value as T;
  };
}

function variable<K extends keyof Config>(spec: Variable<K>): Variable<K> {
  return spec;
}

/** Every variable the service reads, in the order the README documents them. */
export const VARIABLES = [
  variable({
    name: "PORT",
    key: "port",
    default: "3000",
    meaning: "HTTP port to listen on (0 picks a free one).",
    parse: integer(0, 65535),
  }),
  variable({
    name: "HOST",
    key: "host",
    default: "127.0.0.1",
    meaning: "Address to listen on; 0.0.0.0 (or ::) to accept connections from other hosts.",
    parse: (value) => {
      if (value.trim() === "") {
        throw new Error("must not be empty");
      }
      return value;
    },
  }),
  variable({
    name: "DATABASE_URL",
    key: "database",
    default: "sqlite:./data/contacts.db",
    meaning:
      "The store: sqlite:PATH, sqlite::memory:, mysql://user:pass@host:3306/db or postgres://user@host:5432/db.",
    parse: parseDatabaseUrl,
  }),
  variable({
    name: "DATABASE_POOL_SIZE",
    key: "databasePoolSize",
    default: "10",
    meaning: "Connections per process to MySQL/MariaDB or PostgreSQL.",
    parse: integer(1, 1000),
  }),
  variable({
    name: "DATABASE_LOCK_TIMEOUT_MS",
    key: "databaseLockTimeoutMs",
    default: "5000",
    meaning:
      "How long a transaction waits for a lock (or SQLite for its file) before it is retried.",
    parse: integer(100, 600000),
  }),
  variable({
    name: "SQLITE_SYNCHRONOUS",
    key: "sqliteSynchronous",
    default: "normal",
    meaning:
      "SQLite only: normal syncs the WAL at checkpoints (a power loss can undo the last commits); full at every COMMIT.",
    parse: oneOf("full", "normal"),
  }),
  variable({
    name: "LOG_LEVEL",
    key: "logLevel",
    default: "info",
    meaning: "pino level: fatal, error, warn, info, debug, trace or silent.",
    parse: oneOf<LogLevel>("fatal", "error", "warn", "info", "debug", "trace", "silent"),
  }),
  variable({
    name: "ERROR_MESSAGES",
    key: "errorMessages",
    default: "masked",
    meaning:
      "masked answers errors with the design's decoy messages; transparent (development only) with the real reason.",
    parse: oneOf<ErrorMessages>("masked", "transparent"),
  }),
  variable({
    name: "REDIS_URL",
    key: "redisUrl",
    default: "",
    meaning:
      "Redis for the shared cache, e.g. redis://127.0.0.1:6379/0. Unset: an in-process cache (one process only).",
    parse: (value) => {
      if (value === "") {
        return null;
      }
      let url: URL;
      try {
        url = new URL(value);
      } catch {
        throw new Error("is not a URL (redis://host:6379 or rediss://…)");
      }
      if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
        throw new Error("must start with redis:// or rediss://");
      }
      return value;
    },
  }),
  variable({
    name: "CACHE",
    key: "cache",
    default: "on",
    meaning: "off disables the cache: every request reads the database.",
    parse: oneOf("on", "off"),
  }),
  variable({
    name: "CACHE_TTL_SECONDS",
    key: "cacheTtlSeconds",
    default: "3600",
    meaning: "How long a consolidated customer stays cached.",
    parse: integer(1, 30 * 24 * 3600),
  }),
  variable({
    name: "CACHE_PREFIX",
    key: "cachePrefix",
    default: "identity:v1:",
    meaning: "Prefix of every Redis key the service writes.",
    parse: (value) => {
      if (!/^[A-Za-z0-9:._-]{0,64}$/.test(value)) {
        throw new Error("must be at most 64 characters of A-Z a-z 0-9 : . _ -");
      }
      return value;
    },
  }),
  variable({
    name: "CACHE_MAX_ENTRIES",
    key: "cacheMaxEntries",
    default: "100000",
    meaning: "Bound of the in-process cache (entries of customers, index and generations).",
    parse: integer(100, 100_000_000),
  }),
  variable({
    name: "CACHE_TIMEOUT_MS",
    key: "cacheTimeoutMs",
    default: "50",
    meaning: "A Redis command slower than this is abandoned and the database answers instead.",
    parse: integer(1, 10_000),
  }),
  variable({
    name: "WORKERS",
    key: "workers",
    default: "",
    meaning:
      "Server processes sharing the port: a number, or unset for 1 (the number of CPUs when NODE_ENV=production).",
    parse: (value) => (value === "" ? 1 : integer(1, 256)(value)),
  }),
  variable({
    name: "SHUTDOWN_TIMEOUT_MS",
    key: "shutdownTimeoutMs",
    default: "10000",
    meaning:
      "On SIGTERM/SIGINT, how long in-flight requests may take before the process exits anyway (code 1).",
    parse: integer(0, 600_000),
  }),
] as const;

/** Bad configuration: every bad variable, each on a line that names it. */
export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(problems.join("\n"));
    this.name = "ConfigError";
  }
}

/**
 * Reads and validates the configuration from `env` (process.env in the server; a plain object in
 * tests). Unset or empty variables take their defaults. Throws ConfigError listing every bad
 * variable at once.
 */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): Config {
  const problems: string[] = [];
  const values: Partial<Record<keyof Config, unknown>> = {};
  for (const spec of VARIABLES) {
    const raw = env[spec.name];
    const value = raw === undefined || raw === "" ? spec.default : raw;
    try {
      values[spec.key] = spec.parse(value);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      problems.push(`${spec.name}: ${reason}`);
    }
  }
  if (problems.length > 0) {
    throw new ConfigError(problems);
  }
  if ((env.WORKERS ?? "") === "" && env.NODE_ENV === "production") {
    values.workers = availableParallelism();
  }
  return values as unknown as Config;
}
