import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { pino } from "pino";
import { loadConfig } from "../src/config.js";
import { createCache, createDeps } from "../src/deps.js";

const logger = pino({ level: "silent" });

/** The cache kind the service picks for an environment without REDIS_URL, on a server database. */
async function cacheKind(env: Record<string, string>): Promise<string> {
  const { cache } = await createCache(loadConfig(env), logger, null);
  try {
    return cache.kind;
  } finally {
    await cache.close();
  }
}

/** The cache kind the service wires for an environment, on an SQLite file of its own. */
async function sqliteCacheKind(env: Record<string, string>): Promise<string> {
  const deps = await createDeps(
    loadConfig({ ...env, DATABASE_URL: `sqlite:${join(directory, "contacts.db")}` }),
    logger,
  );
  try {
    return deps.cache.kind;
  } finally {
    await deps.close();
  }
}

const directory = mkdtempSync(join(tmpdir(), "idr-deps-"));
after(() => {
  rmSync(directory, { recursive: true, force: true });
});

describe("createCache without Redis", () => {
  // Independently started instances on one database (containers behind a load balancer, each
  // with WORKERS=1) cannot be told apart from one process: an in-process cache by default would
  // let one of them answer from an entry that another one's write made old.
  for (const url of ["postgres://root@127.0.0.1:5432/test", "mysql://root@127.0.0.1:3306/test"]) {
    it(`has no cache by default on ${url.split(":")[0]}`, async () => {
      assert.equal(await cacheKind({ DATABASE_URL: url }), "off");
    });
  }

  // SQLite's in-process cache stays coherent with other processes (data_version, test/concurrency),
  // but costs more memory than the speed issue allows (README, Cache).
  it("has no cache by default on SQLite, and the in-process one with CACHE=on", async () => {
    assert.equal(await sqliteCacheKind({}), "off");
    assert.equal(await sqliteCacheKind({ CACHE: "on" }), "memory");
  });

  it("has none on SQLite with CACHE=on and WORKERS > 1 (each worker's writes would empty the others')", async () => {
    assert.equal(await sqliteCacheKind({ WORKERS: "2", CACHE: "on" }), "off");
  });

  it("keeps an in-process cache when asked for one with CACHE=on", async () => {
    assert.equal(
      await cacheKind({ DATABASE_URL: "postgres://root@127.0.0.1:5432/test", CACHE: "on" }),
      "memory",
    );
  });

  it("has none with CACHE=on and WORKERS > 1 (the processes would not share it)", async () => {
    assert.equal(
      await cacheKind({
        DATABASE_URL: "postgres://root@127.0.0.1:5432/test",
        CACHE: "on",
        WORKERS: "2",
      }),
      "off",
    );
  });
});
