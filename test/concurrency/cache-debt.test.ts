import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { Database } from "../../src/storage/database.js";
import { createTestDatabase, dialectsUnderTest, openMigrated } from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";
import { deleteKeys, freePort, testRedisUrl, uniquePrefix } from "../support/redis.js";
import { postIdentify, startServer } from "../support/server.js";
import type { ServerProcess } from "../support/server.js";

const redisUrl = testRedisUrl();

/** The cache hits a server process has counted (GET /metrics). */
async function cacheHits(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) => /^cache_operations_total\{.*result="hit"/.test(l));
  return Number(line?.split(" ").at(-1) ?? 0);
}

interface Answer {
  readonly primaryContactId: number;
  readonly secondaryContactIds: readonly number[];
}

/**
 * Two server processes on one database and one Redis prefix, as behind a load balancer; one of
 * them cannot reach Redis. It writes, answers, and is killed (`kill -9`) before it ever reaches
 * Redis. Its publication failed, so the other process's cached entry is older than what it
 * answered: the debt it recorded in the database before answering must be paid by the other,
 * which then answers the newer state. Without the ledger, the entry stayed until its TTL (an
 * hour), as seen on 2026-11-29 with Redis stopped by SIGSTOP.
 */
for (const dialect of redisUrl === null ? [] : dialectsUnderTest()) {
  describe(`a cache debt of a killed instance on ${dialect}`, { timeout: 60_000 }, () => {
    let test: TestDatabase;
    let database: Database;
    let reaching: ServerProcess | null = null;
    let cutOff: ServerProcess | null = null;
    const prefix = uniquePrefix();

    before(async () => {
      test = await createTestDatabase(dialect);
      database = await openMigrated(test, 1);
      const env = { DATABASE_URL: test.url, CACHE_PREFIX: prefix };
      [reaching, cutOff] = await Promise.all([
        startServer({ ...env, REDIS_URL: redisUrl ?? "" }),
        // Nothing listens there: this process never reaches a Redis.
        startServer({ ...env, REDIS_URL: `redis://127.0.0.1:${await freePort()}` }),
      ]);
    });

    after(async () => {
      await reaching?.stop();
      await cutOff?.stop();
      await database.destroy();
      await test.drop();
      await deleteKeys(redisUrl ?? "", prefix);
    });

    it("is paid by the instance that reaches Redis, which then answers the newer state", async () => {
      assert.ok(reaching && cutOff);
      const lorraine = { email: "lorraine@hillvalley.edu", phoneNumber: "123456" };
      const created = await postIdentify(reaching.url, lorraine);
      assert.equal(created.status, 200);
      const before = created.body as Answer;
      assert.deepEqual(before.secondaryContactIds, []);
      // Cached in Redis by its publication: answered from there now.
      const hits = await cacheHits(reaching.url);
      assert.deepEqual((await postIdentify(reaching.url, lorraine)).body, created.body);
      assert.equal(await cacheHits(reaching.url), hits + 1, "answered from Redis");

      const added = await postIdentify(cutOff.url, {
        email: "mcfly@hillvalley.edu",
        phoneNumber: "123456",
      });
      assert.equal(added.status, 200);
      const after = added.body as Answer;
      assert.equal(after.primaryContactId, before.primaryContactId);
      assert.equal(after.secondaryContactIds.length, 1);
      cutOff.process.kill("SIGKILL");
      await cutOff.stop();
      cutOff = null;

      let answer = (await postIdentify(reaching.url, lorraine)).body as Answer;
      for (let i = 0; i < 50 && answer.secondaryContactIds.length === 0; i++) {
        await sleep(100);
        answer = (await postIdentify(reaching.url, lorraine)).body as Answer;
      }
      assert.deepEqual(answer, added.body, "the state the killed instance answered");
      // Its row goes right after the payment, in a write of its own.
      const owed = () => database.db.selectFrom("CacheDebt").select("id").execute();
      for (let i = 0; i < 50 && (await owed()).length > 0; i++) {
        await sleep(100);
      }
      assert.deepEqual(await owed(), [], "the debt is paid and forgotten");
    });
  });
}
