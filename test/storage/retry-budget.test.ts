import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { sql } from "kysely";
import { NoCache } from "../../src/cache/customer-cache.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase } from "../../src/storage/database.js";
import { DatabaseError } from "../../src/storage/errors.js";
import { migrateToLatest } from "../../src/storage/migrate.js";
import {
  createTestDatabase,
  holdTransaction,
  serverDialectsUnderTest,
} from "../support/databases.js";

for (const dialect of serverDialectsUnderTest()) {
  describe(`retries of a write to a customer locked elsewhere (${dialect})`, () => {
    it("start no attempt once maxElapsedMs has passed since the first", async () => {
      // A customer's row lock held outside the service (a hand-run SELECT … FOR UPDATE): every
      // attempt waits a lock timeout on a pooled connection. Without a bound on the time, the
      // request kept its connection for 12 attempts, long after its client had been answered.
      const test = await createTestDatabase(dialect);
      const database = openDatabase(test.target, { poolSize: 3, lockTimeoutMs: 200 });
      const holder = openDatabase(test.target, { poolSize: 1, lockTimeoutMs: 5000 });
      let release = (): Promise<void> => Promise.resolve();
      try {
        await migrateToLatest(database);
        const plain = new IdentifyService(new SqlContactStore(database), new NoCache());
        const { customer } = await plain.identify({
          email: "held@example.com",
          phoneNumber: "5550001",
        });
        release = await holdTransaction(holder, (trx) =>
          sql`select id from ${sql.ref("Contact")} where id = ${customer.primaryContactId} for update`.execute(
            trx,
          ),
        );
        const attempts: number[] = [];
        const store = new SqlContactStore(
          database,
          { maxAttempts: 12, baseDelayMs: 1, maxDelayMs: 5, maxElapsedMs: 600 },
          { onRetry: (attempt) => attempts.push(attempt) },
        );
        const service = new IdentifyService(store, new NoCache());
        await assert.rejects(
          service.identify({ email: "held@example.com", phoneNumber: "5550002" }),
          DatabaseError,
        );
        // Each attempt waits for the lock (200 ms on PostgreSQL; on MariaDB a whole second, its
        // least): at most 4 start within 600 ms, where the attempts alone would allow 12. The
        // first report is the simple path's (attempt 0), which the held lock made give up.
        assert.ok(attempts[0] === 0 && attempts.length <= 4, attempts.join());
      } finally {
        await release();
        await holder.destroy();
        await database.destroy();
        await test.drop();
      }
    });
  });
}
