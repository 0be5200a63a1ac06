import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { Customer } from "../../src/domain/contact.js";
import { Redis } from "ioredis";
import { customerDigest } from "../../src/cache/customer-cache.js";
import type { CacheDebtLedger, RecordedDebt } from "../../src/cache/customer-cache.js";
import { RedisCustomerCache } from "../../src/cache/redis.cache.js";
import { SqlCacheDebtLedger } from "../../src/storage/cache-debt.repository.js";
import { openDatabase } from "../../src/storage/database.js";
import { createCacheDebt } from "../../src/storage/migrations/0009-create-cache-debt.js";
import {
  dialectsUnderTest,
  explain,
  fullScan,
  migratedDatabaseForSuite,
} from "../support/databases.js";
import { freshCustomer } from "../support/customers.js";
import { freePort, startOwnRedis, testRedisUrl } from "../support/redis.js";

/** Waits (up to 2 s) until the ledger holds no debt; returns what it still holds. */
async function paidOff(ledger: CacheDebtLedger): Promise<RecordedDebt[]> {
  let owed = await ledger.owed(10);
  for (let i = 0; i < 100 && owed.length > 0; i++) {
    await sleep(20);
    owed = await ledger.owed(10);
  }
  return owed;
}

/** An instance on the Redis at `url` that pays `ledger` every 20 ms. */
function payerOf(url: string, ledger: CacheDebtLedger): RedisCustomerCache {
  const options = { prefix: "identity:v1:", ttlSeconds: 3600, timeoutMs: 200 };
  return new RedisCustomerCache({ ...options, url, ledger, ledgerPollMs: 20 });
}

/**
 * The ledger of the cache's debts (migration 0009, README Cache): a writer whose publication to
 * Redis failed records there what it owes before it answers, and any instance that reaches Redis
 * pays it. So the other instances stop answering the state before that write, even if its writer
 * never reaches Redis again (it died).
 */
for (const dialect of dialectsUnderTest()) {
  describe(`the cache's debt ledger on ${dialect}`, () => {
    const suite = migratedDatabaseForSuite(dialect);

    afterEach(async () => {
      await suite.database.db.deleteFrom("CacheDebt").execute();
    });

    it("keeps the debts in the order recorded until they are paid, any number at a time", async () => {
      const ledger = new SqlCacheDebtLedger(suite.database);
      await ledger.record([
        [10, { kind: "floor", version: 5 }],
        [11, { kind: "tombstone" }],
      ]);
      await ledger.record([[12, { kind: "floor", version: 2 }]]);
      const owed = await ledger.owed(100);
      assert.deepEqual(
        owed.map(({ primaryId, debt }) => [primaryId, debt]),
        [
          [10, { kind: "floor", version: 5 }],
          [11, { kind: "tombstone" }],
          [12, { kind: "floor", version: 2 }],
        ],
      );
      await ledger.paid(owed.slice(0, 2).map(({ id }) => id));
      assert.deepEqual(
        (await ledger.owed(100)).map(({ primaryId }) => primaryId),
        [12],
      );

      // More than one statement's worth (100) recorded and paid: every one of them goes.
      await ledger.record(
        Array.from({ length: 230 }, (_, i) => [1000 + i, { kind: "floor", version: 2 }] as const),
      );
      const page = await ledger.owed(100);
      assert.equal(page.length, 100);
      assert.equal(page[0]?.primaryId, 12);
      const all: number[] = [];
      for (let rows = await ledger.owed(500); rows.length > 0; rows = await ledger.owed(500)) {
        all.push(...rows.map(({ id }) => id));
        await ledger.paid(rows.map(({ id }) => id));
      }
      assert.equal(all.length, 231);
      assert.deepEqual(await ledger.owed(100), []);
    });

    it("sends the same statement texts whatever the values, each served by the key", async () => {
      const sent: { sql: string; parameters: readonly unknown[] }[] = [];
      const watched = openDatabase(suite.test.target, {
        poolSize: 1,
        lockTimeoutMs: 5000,
        onStatement: (sql, parameters) => sent.push({ sql, parameters }),
      });
      try {
        const ledger = new SqlCacheDebtLedger(watched);
        const texts = async (work: () => Promise<unknown>): Promise<string[]> => {
          sent.length = 0;
          await work();
          return sent
            .map((statement) => statement.sql)
            .filter((sql) => /cachedebt/i.test(sql) && !/^\s*(begin|commit)/i.test(sql));
        };
        const one = await texts(() => ledger.record([[777001, { kind: "floor", version: 9 }]]));
        const two = await texts(() =>
          ledger.record([
            [777002, { kind: "tombstone" }],
            [777003, { kind: "floor", version: 3 }],
          ]),
        );
        assert.deepEqual(two, [one[0], one[0]]);
        const read = await texts(() => ledger.owed(100));
        assert.deepEqual(await texts(() => ledger.owed(7)), read);
        const ids = (await ledger.owed(100)).map(({ id }) => id);
        const paidOne = await texts(() => ledger.paid(ids.slice(0, 1)));
        const paidAll = await texts(() => ledger.paid(ids));
        assert.deepEqual(paidAll, paidOne);
        for (const sql of [...one, ...read, ...paidOne]) {
          assert.doesNotMatch(sql, /777\d{3}/, "no value in the text");
        }

        // Enough rows that a planner would rather scan than use a missing index.
        await ledger.record(
          Array.from({ length: 2000 }, (_, i) => [i, { kind: "floor", version: 2 }] as const),
        );
        const first = (await ledger.owed(1))[0]?.id ?? 0;
        sent.length = 0;
        await ledger.owed(100);
        await ledger.paid([first, first + 1, first + 2]);
        const reads = sent.filter((s) => /^\s*(select|delete)\b/i.test(s.sql));
        assert.equal(reads.length, 2);
        for (const statement of reads) {
          const plan = await explain(suite.database, statement);
          assert.doesNotMatch(plan, fullScan(dialect, ["CacheDebt"]), `${statement.sql}\n${plan}`);
        }
      } finally {
        await watched.destroy();
      }
    });

    it("runs its migration again over the table it made (a MySQL run interrupted after it)", async () => {
      await createCacheDebt(dialect).up(suite.database.db);
    });

    it("records again a debt that the database refused, and says so", async () => {
      const ledger = new SqlCacheDebtLedger(suite.database);
      let refusals = 1;
      const refusing: CacheDebtLedger = {
        record: (debts) =>
          refusals-- > 0 ? Promise.reject(new Error("refused")) : ledger.record(debts),
        owed: (limit) => ledger.owed(limit),
        paid: (ids) => ledger.paid(ids),
      };
      const warnings: string[] = [];
      const writer = new RedisCustomerCache(
        {
          url: `redis://127.0.0.1:${await freePort()}`,
          prefix: "identity:v1:",
          ttlSeconds: 3600,
          timeoutMs: 100,
          ledger: refusing,
          ledgerPollMs: 50,
        },
        { onWarning: (message) => warnings.push(message) },
      );
      try {
        const { request, customer } = freshCustomer();
        const v2: Customer = { ...customer, secondaryContactIds: [customer.primaryContactId + 1] };
        await writer.publish(v2, [], request);
        assert.ok(
          warnings.some((w) => w.startsWith("cache debts could not be recorded in the database")),
          warnings.join("\n"),
        );
        for (let i = 0; i < 40 && (await ledger.owed(10)).length === 0; i++) {
          await sleep(50);
        }
        assert.deepEqual(
          (await ledger.owed(10)).map(({ primaryId, debt }) => [primaryId, debt]),
          [[customer.primaryContactId, { kind: "floor", version: 2 }]],
        );
      } finally {
        await writer.close();
      }
    });

    if (testRedisUrl() !== null) {
      it("lets another instance pay what a writer that cannot reach Redis owes, and forget it", async () => {
        const own = await startOwnRedis();
        const ledger = new SqlCacheDebtLedger(suite.database);
        const options = { prefix: "identity:v1:", ttlSeconds: 3600, timeoutMs: 100, ledger };
        // The writer never reaches its Redis (nothing listens there): it owes every publication.
        const writer = new RedisCustomerCache({
          ...options,
          url: `redis://127.0.0.1:${await freePort()}`,
        });
        const other = payerOf(own.url, ledger);
        try {
          assert.ok(await other.waitUntilReady(5000));
          const a = freshCustomer();
          const b = freshCustomer();
          const v6: Customer = { ...a.customer, secondaryContactIds: [1, 2, 3, 4, 5] };
          // v7: a's customer after a merge took b's in (b's primary is now a secondary of a's).
          const v7: Customer = {
            ...a.customer,
            emails: [...a.customer.emails, ...b.customer.emails],
            secondaryContactIds: [1, 2, 3, 4, 5, b.customer.primaryContactId],
          };
          await other.publish(v6, [], a.request);
          await other.publish(b.customer, [], b.request);
          assert.deepEqual((await other.lookup(a.request)).customer, v6);
          assert.deepEqual((await other.lookup(b.request)).customer, b.customer);

          await writer.publish(v7, [b.customer.primaryContactId], a.request);
          assert.equal(writer.pendingInvalidations(), 2, "the writer owes a floor and a tombstone");

          assert.deepEqual(await paidOff(ledger), [], "paid, and removed from the ledger");
          // The other instance no longer answers the states before the writer's: a floor at 7
          // (a fill of v6 is refused, one of v7 is stored) and a tombstone for b's old primary.
          const miss = await other.lookup(a.request);
          assert.equal(miss.customer, null);
          assert.ok(miss.ticket);
          await other.fill(miss.ticket, v6, a.request);
          const again = await other.lookup(a.request);
          assert.equal(again.customer, null, "v6 is older than the writer's answer");
          assert.ok(again.ticket);
          await other.fill(again.ticket, v7, a.request);
          assert.deepEqual((await other.lookup(a.request)).customer, v7);
          assert.equal((await other.lookup(b.request)).customer, null, "b was merged away");
          // The writer itself still owes them in memory: the other instance did not need it.
          assert.equal(writer.pendingInvalidations(), 2);
          assert.equal(writer.stats().debtsRecorded, 2);
          assert.equal(other.stats().debtsPaid, 2);
        } finally {
          await writer.close();
          await other.close();
          await own.stop();
        }
      });

      it("pays a page of debts even where a key holds something that is not an entry", async () => {
        const own = await startOwnRedis();
        const ledger = new SqlCacheDebtLedger(suite.database);
        const admin = new Redis(own.url);
        const payer = payerOf(own.url, ledger);
        try {
          assert.ok(await payer.waitUntilReady(5000));
          const [a, b] = [freshCustomer(), freshCustomer()];
          const info = await admin.info();
          const ids = ["run_id", "master_replid"].map(
            (field) => new RegExp(`^${field}:([0-9a-f]{12})`, "m").exec(info)?.[1] ?? "",
          );
          const key = `identity:v1:${ids.join("")}:${customerDigest(a.customer.primaryContactId)}`;
          await admin.set(key, "not json");
          await ledger.record([
            [a.customer.primaryContactId, { kind: "floor", version: 3 }],
            [b.customer.primaryContactId, { kind: "floor", version: 3 }],
          ]);
          assert.deepEqual(await paidOff(ledger), [], "the whole page is paid");
          assert.deepEqual(JSON.parse((await admin.get(key)) ?? "null"), { floor: 3 });
        } finally {
          admin.disconnect();
          await payer.close();
          await own.stop();
        }
      });

      it("does not forget debts it read while Redis came back as another server", async () => {
        const own = await startOwnRedis();
        const ledger = new SqlCacheDebtLedger(suite.database);
        const { request, customer } = freshCustomer();
        await ledger.record([[customer.primaryContactId, { kind: "floor", version: 2 }]]);
        // The ledger itself, with its first read held until the test lets it answer.
        let reads = 0;
        const gate: { answer: (() => void) | null } = { answer: null };
        const held: CacheDebtLedger = {
          record: (debts) => ledger.record(debts),
          paid: (ids) => ledger.paid(ids),
          owed: async (limit) => {
            const rows = await ledger.owed(limit);
            if (++reads === 1) {
              await new Promise<void>((resolve) => (gate.answer = resolve));
            }
            return rows;
          },
        };
        const payer = payerOf(own.url, held);
        try {
          assert.ok(await payer.waitUntilReady(5000));
          for (let i = 0; i < 100 && gate.answer === null; i++) {
            await sleep(10);
          }
          // Restarted while the page was read: a new run id, so a new namespace, where a reader
          // stores version 1 (its database read came before the writer's commit).
          await own.stop();
          for (let i = 0; i < 100 && payer.available(); i++) {
            await sleep(10);
          }
          await own.start();
          assert.ok(await payer.waitUntilReady(5000));
          await payer.publish(customer, [], request);
          assert.deepEqual((await payer.lookup(request)).customer, customer);
          assert.ok(gate.answer !== null);
          gate.answer();
          assert.deepEqual(await paidOff(ledger), []);
          assert.equal(
            (await payer.lookup(request)).customer,
            null,
            "the floor was paid where the keys are now, not where they were",
          );
        } finally {
          await payer.close();
          await own.stop();
        }
      });
    }
  });
}
