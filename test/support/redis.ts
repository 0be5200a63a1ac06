import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";

/** The shared Redis of the test run, when TEST_REDIS_URL is set. */
export function testRedisUrl(): string | null {
  return process.env.TEST_REDIS_URL ?? null;
}

/** A key prefix no other test uses. */
export function uniquePrefix(): string {
  return `idr-test:${randomBytes(6).toString("hex")}:`;
}

/** Deletes every key under `prefix` (tests leave Redis as they found it). */
export async function deleteKeys(url: string, prefix: string): Promise<void> {
  const redis = new Redis(url);
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      if (keys.length > 0) {
        await redis.del(...keys);
      }
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
}

/** Every key under `prefix`. */
export async function keysUnder(url: string, prefix: string): Promise<string[]> {
  const redis = new Redis(url);
  try {
    const found: string[] = [];
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      found.push(...keys);
    } while (cursor !== "0");
    return found;
  } finally {
    redis.disconnect();
  }
}

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  if (address === null || typeof address === "string") {
    throw new Error("no port");
  }
  return address.port;
}

/**
 * A Redis server this test starts itself, on its own port, keeping nothing on disk; with `dir`, a
 * `SAVE` writes a snapshot there, and a restart loads it back.
 */
export interface OwnRedis {
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
  start(): Promise<void>;
}

export async function startOwnRedis(options: { dir?: string } = {}): Promise<OwnRedis> {
  const port = await freePort();
  let child: ChildProcess | null = null;
  const start = async () => {
    child = spawn(
      "redis-server",
      [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "local",
        ...(options.dir === undefined ? [] : ["--dir", options.dir, "--dbfilename", "dump.rdb"]),
      ],
      { stdio: "ignore" },
    );
    for (let i = 0; i < 100; i++) {
      const probe = new Redis({
        port,
        host: "127.0.0.1",
        lazyConnect: true,
        retryStrategy: () => null,
      });
      probe.on("error", () => undefined);
      try {
        await probe.connect();
        await probe.ping();
        probe.disconnect();
        return;
      } catch {
        probe.disconnect();
        await sleep(50);
      }
    }
    throw new Error(`redis-server on ${port} did not start`);
  };
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    start,
    stop: async () => {
      const running = child;
      if (running === null || running.exitCode !== null) {
        return;
      }
      running.kill("SIGKILL");
      await once(running, "exit");
      child = null;
    },
  };
}
