import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import type { DialectName } from "../../src/storage/database.js";
import type { Database } from "../../src/storage/database.js";
import { createTestDatabase, openMigrated } from "./databases.js";
import type { TestDatabase } from "./databases.js";
import { testRedisUrl } from "./redis.js";

/** A server process started from src/server.ts, as a user would run it. */
export interface ServerProcess {
  readonly url: string;
  readonly process: ChildProcess;
  /** Every stdout line (pino JSON) the process printed so far. */
  readonly lines: string[];
  stop(): Promise<number | null>;
}

const ROOT = new URL("../../", import.meta.url).pathname;

/**
 * Processes started here and not yet exited. Killed when this process exits however it ends (an
 * uncaught error included), so that no server outlives the test run or the benchmark that
 * started it.
 */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) {
    child.kill("SIGKILL");
  }
});

/** How a server process is launched: `node` in the project's root unless told otherwise. */
export interface Launch {
  /** The program run with `entry` as its arguments (valgrind, to run `node` under it). */
  readonly command?: string;
  /** The directory it runs in (another checkout's, to run another build). */
  readonly cwd?: string;
  /** Gives up after this long without listening: kills the process and rejects. None by default. */
  readonly startTimeoutMs?: number;
}

/** Spawns `node <entry>` (or `launch.command`) with `env` added, its output piped. */
function spawnNode(entry: readonly string[], env: Record<string, string>, launch: Launch = {}) {
  const child = spawn(launch.command ?? process.execPath, entry, {
    cwd: launch.cwd ?? ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  child.once("exit", () => running.delete(child));
  return child;
}

/** The server entry point run through tsx, as the tests start it. */
export const SERVER_ENTRY = ["--import", "tsx", "src/server.ts"];

/**
 * Spawns `node <entry>` (by default the server through tsx) with `env` added to the environment
 * (PORT=0 unless given) and resolves once it listens. Rejects with the process output if it
 * exits first, if it cannot be spawned, or if it does not listen within `launch.startTimeoutMs`.
 */
export async function startServer(
  env: Record<string, string>,
  entry: readonly string[] = SERVER_ENTRY,
  launch: Launch = {},
): Promise<ServerProcess> {
  const child = spawnNode(entry, { PORT: "0", LOG_LEVEL: "info", ...env }, launch);
  const lines: string[] = [];
  const errors: string[] = [];
  createInterface({ input: child.stderr }).on("line", (line) => errors.push(line));
  const listening = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
      lines.push(line);
      const match = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(line);
      if (match?.[1] !== undefined) {
        resolve(match[1]);
      }
    });
    child.once("exit", (code) => {
      reject(new Error(`server exited with ${code}: ${[...lines, ...errors].join("\n")}`));
    });
    child.once("error", (error) => {
      reject(new Error(`cannot start ${launch.command ?? "node"}: ${error.message}`));
    });
  });
  const { startTimeoutMs } = launch;
  // An object, not a `let`: the flag is set in the timer's callback.
  const start = { timedOut: false };
  const timer =
    startTimeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          start.timedOut = true;
          child.kill("SIGKILL");
        }, startTimeoutMs);
  let url: string;
  try {
    url = await listening;
  } catch (error) {
    throw start.timedOut
      ? new Error(`the server did not listen within ${startTimeoutMs} ms`, { cause: error })
      : error;
  } finally {
    clearTimeout(timer);
  }
  return {
    url,
    process: child,
    lines,
    stop: async () => {
      if (child.exitCode !== null) {
        return child.exitCode;
      }
      child.kill("SIGTERM");
      const [code] = (await once(child, "exit")) as [number | null];
      return code;
    },
  };
}

interface Exited {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `node <entry>` to completion (killed after `timeoutMs`) and collects its output. */
async function runToExit(
  entry: readonly string[],
  env: Record<string, string>,
  timeoutMs = 20000,
): Promise<Exited> {
  const child = spawnNode(entry, env);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [code] = (await once(child, "exit")) as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** Runs the server entry point to completion (for start-up failures) and collects its output. */
export function runServerToExit(env: Record<string, string>, timeoutMs = 20000): Promise<Exited> {
  return runToExit(SERVER_ENTRY, { PORT: "0", ...env }, timeoutMs);
}

/**
 * POSTs a JSON body (or a raw string) to /identify and returns status, headers and body (parsed
 * when it is JSON, and as the text received).
 */
export async function postIdentify(
  baseUrl: string,
  body: unknown,
  init: { raw?: string; contentType?: string; headers?: Record<string, string> } = {},
): Promise<{ status: number; headers: Headers; body: unknown; text: string }> {
  const response = await fetch(`${baseUrl}/identify`, {
    method: "POST",
    headers: { "content-type": init.contentType ?? "application/json", ...init.headers },
    body: init.raw ?? JSON.stringify(body),
  });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: response.status, headers: response.headers, body: parsed, text };
}

/** Runs `npm run migrate`'s entry point against `databaseUrl` and collects its output. */
export function runMigrate(databaseUrl: string): Promise<Exited> {
  return runToExit(["--import", "tsx", "src/cli/migrate.ts"], { DATABASE_URL: databaseUrl });
}

/**
 * The environment of a server process on `databaseUrl` with a cache: none, Redis (under
 * `prefix`, at TEST_REDIS_URL) or in-process (CACHE=on).
 */
function serverEnv(
  databaseUrl: string,
  cache: "off" | "redis" | "in-process",
  prefix: string,
): Record<string, string> {
  switch (cache) {
    case "off":
      return { DATABASE_URL: databaseUrl, CACHE: "off" };
    case "redis":
      return { DATABASE_URL: databaseUrl, REDIS_URL: testRedisUrl() ?? "", CACHE_PREFIX: prefix };
    case "in-process":
      return { DATABASE_URL: databaseUrl, CACHE: "on" };
  }
}

/**
 * A new test database of `dialect`, migrated and open, and two server processes serving it with
 * the same cache: what the concurrency suites run against.
 */
export async function twoServersOnOneDatabase(
  dialect: DialectName,
  cache: "off" | "redis" | "in-process",
  prefix: string,
): Promise<{ test: TestDatabase; database: Database; servers: ServerProcess[] }> {
  const test = await createTestDatabase(dialect);
  const database = await openMigrated(test);
  const env = serverEnv(test.url, cache, prefix);
  const servers = await Promise.all([startServer(env), startServer(env)]);
  return { test, database, servers };
}
