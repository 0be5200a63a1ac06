import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { isIP } from "node:net";
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
  /** auto: see the CACHE variable; deps.ts decides. */
  readonly cache: "auto" | "on" | "off";
  readonly cacheTtlSeconds: number;
  readonly cachePrefix: string;
  readonly cacheMaxEntries: number;
  readonly cacheTimeoutMs: number;
  readonly workers: number;
  readonly shutdownTimeoutMs: number;
  /** Hex SHA-256 digests of the API keys from API_KEYS. */
  readonly apiKeys: readonly string[];
  /** Hex SHA-256 digests read from API_KEYS_FILE. */
  readonly apiKeysFile: readonly string[];
  readonly rateLimitMax: number;
  readonly rateLimitWindowMs: number;
  readonly rateLimitSyncMs: number;
  readonly threatLimit: number;
  readonly threatWindowMs: number;
  readonly threatCooldownMs: number;
  readonly trustProxy: boolean | string;
  readonly corsOrigins: readonly string[];
  readonly requestTimeoutMs: number;
  readonly connectionTimeoutMs: number;
  readonly handlerTimeoutMs: number;
  readonly keepAliveTimeoutMs: number;
  readonly maxRequestsPerSocket: number;
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

/** proxy-addr's names for address ranges, which TRUST_PROXY may use as Fastify does. */
const PROXY_RANGES = new Set(["loopback", "linklocal", "uniquelocal"]);

/**
 * TRUST_PROXY as Fastify takes it: a boolean, or proxy addresses and CIDRs. Checked here so that a
 * typo fails at start with the variable's name. A number of hops (`1`, the usual idiom elsewhere)
 * is refused: Fastify would read the string as the address 0.0.0.1, and a number as trusting
 * nobody, so every client would share the load balancer's address in the limits.
 */
function parseTrustProxy(value: string): boolean | string {
  if (value === "false") {
    return false;
  }
  if (value === "true") {
    return true;
  }
  if (/^[0-9]+$/.test(value)) {
    throw new Error(
      "a number of hops is not supported: give true, or the proxies' addresses or CIDRs",
    );
  }
  const entries = value.split(",").map((entry) => entry.trim());
  for (const entry of entries) {
    const [address = "", bits, ...rest] = entry.split("/");
    const family = isIP(address);
    const prefixOk =
      bits === undefined ||
      (/^[0-9]{1,3}$/.test(bits) && Number(bits) <= (family === 6 ? 128 : 32));
    if (!PROXY_RANGES.has(entry) && (family === 0 || !prefixOk || rest.length > 0)) {
      throw new Error(
        `${JSON.stringify(entry)} is not true, false, an address, a CIDR or loopback/linklocal/uniquelocal`,
      );
    }
  }
  return entries.join(",");
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
    meaning: "Redis for the shared cache, e.g. redis://127.0.0.1:6379/0. Unset: see CACHE.",
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
    default: "auto",
    meaning:
      "auto: Redis with REDIS_URL, none without it. on: a cache always (in-process without REDIS_URL, coherent within that one process only; none with WORKERS > 1). off: every request reads the database.",
    parse: oneOf("auto", "on", "off"),
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
    default: "25000",
    meaning:
      "Customers the in-process cache keeps at most (its index: three times as many emails, and as many phone numbers).",
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
  variable({
    name: "API_KEYS",
    key: "apiKeys",
    default: "",
    meaning:
      "Comma-separated API keys (16+ characters each). With any key configured, /identify and /metrics need Authorization: Bearer <key>.",
    parse: (value) => {
      const keys = value
        .split(",")
        .map((k) => k.trim())
        .filter(Boolean);
      if (keys.some((k) => k.length < 16 || /\s/.test(k))) {
        throw new Error("every key must be at least 16 characters, without spaces");
      }
      return keys.map((k) => createHash("sha256").update(k).digest("hex"));
    },
  }),
  variable({
    name: "API_KEYS_FILE",
    key: "apiKeysFile",
    default: "",
    meaning:
      "A file of hex SHA-256 digests of API keys, one per line (# comments), added to API_KEYS; no key in clear on disk.",
    parse: (value) => {
      if (value === "") {
        return [];
      }
      let text: string;
      try {
        text = readFileSync(value, "utf8");
      } catch {
        throw new Error(`cannot read ${value}`);
      }
      const digests = text
        .split("\n")
        .map((line) => line.replace(/#.*$/, "").trim().toLowerCase())
        .filter(Boolean);
      if (digests.some((d) => !/^[0-9a-f]{64}$/.test(d))) {
        throw new Error("every line must be a hex SHA-256 digest (64 hex characters)");
      }
      return digests;
    },
  }),
  variable({
    name: "RATE_LIMIT_MAX",
    key: "rateLimitMax",
    default: "600000",
    meaning:
      "Requests per client (API key, else address) per window on /identify and /metrics; 0 turns rate limiting off. Shared through Redis when REDIS_URL is set.",
    parse: integer(0, 1_000_000_000),
  }),
  variable({
    name: "RATE_LIMIT_WINDOW_MS",
    key: "rateLimitWindowMs",
    default: "60000",
    meaning: "The rate-limit window.",
    parse: integer(100, 86_400_000),
  }),
  variable({
    name: "RATE_LIMIT_SYNC_MS",
    key: "rateLimitSyncMs",
    default: "100",
    meaning:
      "With REDIS_URL: how often each instance adds its rate-limit counts to the shared ones in Redis (no Redis round trip per request); between two syncs an instance does not see the others' new requests. 0: one Redis script per request, exact across instances.",
    parse: integer(0, 60_000),
  }),
  variable({
    name: "THREAT_LIMIT",
    key: "threatLimit",
    default: "5",
    meaning: "403s (attack signatures) within THREAT_WINDOW_MS that put a client in cool-down.",
    parse: integer(1, 1_000_000),
  }),
  variable({
    name: "THREAT_WINDOW_MS",
    key: "threatWindowMs",
    default: "60000",
    meaning: "The window in which THREAT_LIMIT 403s are counted.",
    parse: integer(100, 86_400_000),
  }),
  variable({
    name: "THREAT_COOLDOWN_MS",
    key: "threatCooldownMs",
    default: "300000",
    meaning: "How long a client in cool-down is answered 403, before any database work.",
    parse: integer(0, 86_400_000),
  }),
  variable({
    name: "TRUST_PROXY",
    key: "trustProxy",
    default: "false",
    meaning:
      "Behind a load balancer: true (trust every hop), or comma-separated proxy addresses/CIDRs (or loopback, linklocal, uniquelocal) whose X-Forwarded-For is believed (the client address for limits).",
    parse: parseTrustProxy,
  }),
  variable({
    name: "CORS_ORIGINS",
    key: "corsOrigins",
    default: "",
    meaning:
      "Comma-separated origins allowed to call the API from a browser; unset: no CORS headers (closed).",
    parse: (value) => {
      const origins = value
        .split(",")
        .map((o) => o.trim())
        .filter(Boolean);
      for (const origin of origins) {
        // An origin is a scheme, a host and maybe a port, exactly as a browser sends it: with a
        // path or a trailing slash it would never equal an Origin header.
        if (!URL.canParse(origin) || new URL(origin).origin !== origin) {
          throw new Error(`${origin} is not an origin such as https://shop.example.com`);
        }
      }
      return origins;
    },
  }),
  variable({
    name: "REQUEST_TIMEOUT_MS",
    key: "requestTimeoutMs",
    default: "10000",
    meaning:
      "Time to receive a whole request (headers and body): a client that trickles it (slow loris) is cut off.",
    parse: integer(100, 600_000),
  }),
  variable({
    name: "CONNECTION_TIMEOUT_MS",
    key: "connectionTimeoutMs",
    default: "120000",
    meaning: "A socket with no activity for this long is closed.",
    parse: integer(100, 3_600_000),
  }),
  variable({
    name: "HANDLER_TIMEOUT_MS",
    key: "handlerTimeoutMs",
    default: "15000",
    meaning: "A request not answered within this time gets 503 (its transaction may still commit).",
    parse: integer(100, 600_000),
  }),
  variable({
    name: "KEEP_ALIVE_TIMEOUT_MS",
    key: "keepAliveTimeoutMs",
    default: "72000",
    meaning:
      "How long an idle keep-alive connection stays open (above common load balancers' 60 s).",
    parse: integer(100, 600_000),
  }),
  variable({
    name: "MAX_REQUESTS_PER_SOCKET",
    key: "maxRequestsPerSocket",
    default: "10000",
    meaning: "Requests served on one keep-alive connection before it is closed; 0 for no limit.",
    parse: integer(0, 1_000_000_000),
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
