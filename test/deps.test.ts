import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pino } from "pino";
import { loadConfig } from "../src/config.js";
import { createCache } from "../src/deps.js";

const logger = pino({ level: "silent" });

/** The cache kind the service picks for an environment without REDIS_URL. */
async function cacheKind(env: Record<string, string>): Promise<string> {
  const { cache } = await createCache(loadConfig(env), logger);
  try {
    return cache.kind;
  } finally {
    await cache.close();
  }
}

describe("createCache without Redis", () => {
  // Independently started instances on one database (containers behind a load balancer, each
  // with WORKERS=1) cannot be told apart from one process: an in-process cache by default would
  // let one of them answer from an entry that another one's write made old.
  for (const url of [
    "postgres://root@127.0.0.1:5432/test",
    "mysql://root@127.0.0.1:3306/test",
    "sqlite:./data/contacts.db",
  ]) {
    it(`has no cache by default on ${url.split(":")[0]}`, async () => {
      assert.equal(await cacheKind({ DATABASE_URL: url }), "off");
    });
  }

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
