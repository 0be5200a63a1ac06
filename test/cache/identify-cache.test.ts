import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import type { CustomerCache } from "../../src/cache/customer-cache.js";
import { NoCache } from "../../src/cache/customer-cache.js";
import { MemoryCustomerCache } from "../../src/cache/memory.cache.js";
import { RedisCustomerCache } from "../../src/cache/redis.cache.js";
import type { Database } from "../../src/storage/database.js";
import { startApp } from "../support/app.js";
import {
  allContacts,
  createTestDatabase,
  dialectsUnderTest,
  openMigrated,
} from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";
import { customersOf, expectedAnswer, runPool, seededRandom } from "../support/invariants.js";
import type { Answer } from "../support/invariants.js";
import { deleteKeys, startOwnRedis, testRedisUrl, uniquePrefix } from "../support/redis.js";
import { postIdentify } from "../support/server.js";

const redisUrl = testRedisUrl();

async function identify(url: string, body: unknown): Promise<Answer> {
  const response = await postIdentify(url, body);
  assert.equal(response.status, 200, JSON.stringify(response.body));
  return response.body as Answer;
}

/** Each email and each phone of `people`, alone, is answered with `expected`. */
async function expectEachIdentifier(
  url: string,
  people: readonly { email: string; phoneNumber: string }[],
  expected: Answer,
): Promise<void> {
  for (const { email, phoneNumber } of people) {
    for (const body of [{ email }, { phoneNumber }]) {
      assert.deepEqual(await identify(url, body), expected, JSON.stringify(body));
    }
  }
}

/** A gate the service waits at once, between its database read and its cache fill. */
function fillGate() {
  let armed = false;
  let reached: () => void = () => undefined;
  let release: () => void = () => undefined;
  const reachedPromise = new Promise<void>((resolve) => (reached = resolve));
  const released = new Promise<void>((resolve) => (release = resolve));
  return {
    arm: () => {
      armed = true;
    },
    reached: reachedPromise,
    release,
    hook: async () => {
      if (armed) {
        armed = false;
        reached();
        await released;
      }
    },
  };
}

for (const dialect of dialectsUnderTest()) {
  const kinds = redisUrl === null ? ["in-process"] : ["in-process", "redis"];
  for (const kind of kinds) {
    describe(`cache freshness on ${dialect} with the ${kind} cache`, () => {
      let test: TestDatabase;
      let database: Database;
      const prefix = uniquePrefix();

      before(async () => {
        test = await createTestDatabase(dialect);
        database = await openMigrated(test);
      });

      after(async () => {
        await database.destroy();
        await test.drop();
        if (redisUrl !== null) {
          await deleteKeys(redisUrl, prefix);
        }
      });

      async function openCache(): Promise<CustomerCache> {
        if (kind === "in-process" || redisUrl === null) {
          return new MemoryCustomerCache({ ttlSeconds: 3600, maxEntries: 10_000 });
        }
        const cache = new RedisCustomerCache({
          url: redisUrl,
          prefix,
          ttlSeconds: 3600,
          timeoutMs: 200,
        });
        assert.ok(await cache.waitUntilReady(5000));
        return cache;
      }

      it("answers repeats from the cache once filled, without reading the database", async () => {
        const cache = await openCache();
        const running = await startApp(database, { cache });
        try {
          const created = await identify(running.url, {
            email: "hit@hillvalley.edu",
            phoneNumber: "5551000",
          });
          await identify(running.url, { email: "hit@hillvalley.edu", phoneNumber: "5551000" }); // fills
          const before = cache.stats().hits;
          for (let i = 0; i < 5; i++) {
            assert.deepEqual(await identify(running.url, { phoneNumber: "5551000" }), created);
          }
          assert.equal(cache.stats().hits - before, 5);
        } finally {
          await running.close();
          await cache.close();
        }
      });

      it("never fills the cache from a read taken before a concurrent write committed", async () => {
        const cache = await openCache();
        const gate = fillGate();
        const running = await startApp(database, {
          cache,
          service: { beforeCacheFill: gate.hook },
        });
        // Created through another instance, so this one has no entry and must read the database.
        const elsewhere = await startApp(database, { cache: new NoCache() });
        try {
          const created = await identify(elsewhere.url, {
            email: "race@hillvalley.edu",
            phoneNumber: "5552000",
          });
          // The first read only learns where the customer is; the second may fill.
          assert.deepEqual(await identify(running.url, { email: "race@hillvalley.edu" }), created);
          // That second read takes its ticket, reads the database, then waits at the fill...
          gate.arm();
          const reader = identify(running.url, { email: "race@hillvalley.edu" });
          await gate.reached;
          // ...while a writer adds a phone, commits and publishes.
          const written = await identify(running.url, {
            email: "race@hillvalley.edu",
            phoneNumber: "5552001",
          });
          assert.deepEqual(written.phoneNumbers, ["5552000", "5552001"]);
          gate.release();
          assert.deepEqual(await reader, created, "the reader was concurrent with the write");

          // Every later request sees the write, however it is asked.
          for (const body of [
            { email: "race@hillvalley.edu" },
            { phoneNumber: "5552000" },
            { email: "race@hillvalley.edu", phoneNumber: "5552000" },
          ]) {
            assert.deepEqual(await identify(running.url, body), written, JSON.stringify(body));
          }
          assert.equal(cache.stats().staleFillsRefused, 1);
        } finally {
          await elsewhere.close();
          await running.close();
          await cache.close();
        }
      });

      it("invalidates both customers of a merge before answering", async () => {
        const cache = await openCache();
        const running = await startApp(database, { cache });
        try {
          const a = { email: "merge-a@hillvalley.edu", phoneNumber: "5553000" };
          const b = { email: "merge-b@hillvalley.edu", phoneNumber: "5553001" };
          for (const body of [a, b, a, b]) {
            await identify(running.url, body); // create, then fill both
          }
          await identify(running.url, a);
          await identify(running.url, b);
          const merged = await identify(running.url, {
            email: a.email,
            phoneNumber: b.phoneNumber,
          });
          assert.equal(merged.secondaryContactIds.length, 1);
          await expectEachIdentifier(running.url, [a, b], merged);
        } finally {
          await running.close();
          await cache.close();
        }
      });

      it("repairs, at the next database read, what a writer that committed but never published left", async () => {
        const cache = await openCache();
        const running = await startApp(database, { cache });
        // Commits and never publishes: a writer that died between its COMMIT and its publication.
        const silent = await startApp(database, { cache: new NoCache() });
        try {
          const a = { email: "repair-a@hillvalley.edu", phoneNumber: "5554000" };
          const b = { email: "repair-b@hillvalley.edu", phoneNumber: "5554001" };
          for (const body of [a, b, a, b]) {
            await identify(running.url, body); // create, then fill both
          }
          const grown = await identify(silent.url, { email: a.email, phoneNumber: "5554002" });
          assert.equal(grown.secondaryContactIds.length, 1);
          // The client's retry: its new phone is in no index, so it reads the database.
          assert.deepEqual(
            await identify(running.url, { email: a.email, phoneNumber: "5554002" }),
            grown,
          );
          assert.deepEqual(await identify(running.url, { email: a.email }), grown);

          const merged = await identify(silent.url, { email: a.email, phoneNumber: b.phoneNumber });
          assert.equal(merged.secondaryContactIds.length, 2);
          assert.deepEqual(
            await identify(running.url, { email: a.email, phoneNumber: b.phoneNumber }),
            merged,
          );
          await expectEachIdentifier(running.url, [b, a], merged);
          assert.ok(cache.stats().repairs >= 3, JSON.stringify(cache.stats()));
        } finally {
          await silent.close();
          await running.close();
          await cache.close();
        }
      });
    });
  }
}

describe("Redis faults during a stream of requests", { timeout: 120_000 }, () => {
  const dialect = dialectsUnderTest().includes("postgres") ? "postgres" : "sqlite";
  let test: TestDatabase;
  let database: Database;

  before(async () => {
    test = await createTestDatabase(dialect);
    database = await openMigrated(test);
  });

  after(async () => {
    await database.destroy();
    await test.drop();
  });

  it("answers every request correctly while Redis stops, crawls and comes back, then uses the cache again", async () => {
    const redis = await startOwnRedis();
    const events: string[] = [];
    const cache = new RedisCustomerCache(
      { url: redis.url, prefix: "identity:v1:", ttlSeconds: 3600, timeoutMs: 50 },
      {
        onUnavailable: () => events.push("unavailable"),
        onAvailable: () => events.push("available"),
      },
    );
    assert.ok(await cache.waitUntilReady(5000));
    const running = await startApp(database, { cache });
    const random = seededRandom(7);
    const customers = 30;
    const bodyFor = (i: number): { email: string; phoneNumber?: string } => {
      const c = Math.floor(random() * customers);
      const roll = random();
      if (roll < 0.05) {
        return {
          email: `fault${c}@hillvalley.edu`,
          phoneNumber: `+1777${String(i).padStart(6, "0")}`,
        };
      }
      return roll < 0.5
        ? { email: `fault${c}@hillvalley.edu` }
        : { email: `fault${c}@hillvalley.edu`, phoneNumber: `+1666${String(c).padStart(4, "0")}` };
    };
    const failures: string[] = [];
    const phase = async (count: number) => {
      await runPool(count, 8, async (i) => {
        const body = bodyFor(i);
        const response = await postIdentify(running.url, body);
        const answer = response.body as Answer;
        if (response.status !== 200) {
          failures.push(`${response.status} ${JSON.stringify(response.body)}`);
        } else if (
          !answer.emails.includes(body.email) ||
          (body.phoneNumber !== undefined && !answer.phoneNumbers.includes(body.phoneNumber))
        ) {
          failures.push(`answer lacks the request's values: ${JSON.stringify(body)}`);
        }
      });
    };
    const slowRedis = async () => {
      const admin = new Redis(redis.url);
      try {
        for (let i = 0; i < 3; i++) {
          await admin.call("DEBUG", "SLEEP", "0.2");
        }
      } finally {
        admin.disconnect();
      }
    };
    try {
      await phase(200);
      const hitsWhileUp = cache.stats().hits;
      assert.ok(hitsWhileUp > 0, "the cache is used while Redis is up");

      await redis.stop();
      await phase(200);
      const errorsWhileDown = cache.stats().errors;
      assert.ok(errorsWhileDown > 0);

      await redis.start();
      await sleep(1500); // ioredis reconnects on its own
      await Promise.all([phase(150), slowRedis()]);

      // Once Redis answers again, what this instance owes it is paid within moments.
      for (let i = 0; i < 50 && cache.pendingInvalidations() > 0; i++) {
        await sleep(100);
      }
      assert.equal(cache.pendingInvalidations(), 0);
      const hitsBefore = cache.stats().hits;
      await phase(200);
      assert.ok(
        cache.stats().hits > hitsBefore + 50,
        "the cache is used again after Redis is back",
      );
      assert.deepEqual(failures, []);
      assert.ok(events.includes("unavailable") && events.at(-1) === "available", events.join(","));
      assert.equal(cache.pendingInvalidations(), 0);

      // Every identifier answers exactly what the database holds.
      const rows = await allContacts(database);
      for (const [primaryId, members] of customersOf(rows)) {
        const expected = expectedAnswer(rows, primaryId);
        for (const row of members) {
          const body = row.email !== null ? { email: row.email } : { phoneNumber: row.phoneNumber };
          assert.deepEqual(await identify(running.url, body), expected);
        }
      }
    } finally {
      await running.close();
      await cache.close();
      await redis.stop();
    }
  });
});
