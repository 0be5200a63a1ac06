import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { sql } from "kysely";
import { createConnection } from "mysql2/promise";
import { NoCache } from "../../src/cache/customer-cache.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase } from "../../src/storage/database.js";
import type { Database, DialectName } from "../../src/storage/database.js";
import { DatabaseError } from "../../src/storage/errors.js";
import { migrateToLatest } from "../../src/storage/migrate.js";
import {
  createTestDatabase,
  holdTransaction,
  serverDialectsUnderTest,
} from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";

/** The service's database (200 ms lock timeout) and a connection that holds locks outside it. */
interface LockedSetup {
  readonly test: TestDatabase;
  readonly database: Database;
  readonly holder: Database;
  /** What to run, at the end, to release the locks held. */
  readonly held: (release: () => Promise<void>) => void;
}

/** Runs `work` on a new migrated database of `dialect`; releases its locks and drops it after. */
async function withLocksHeld(
  dialect: DialectName,
  work: (setup: LockedSetup) => Promise<void>,
): Promise<void> {
  const test = await createTestDatabase(dialect);
  const database = openDatabase(test.target, { poolSize: 3, lockTimeoutMs: 200 });
  const holder = openDatabase(test.target, { poolSize: 1, lockTimeoutMs: 5000 });
  let release = (): Promise<void> => Promise.resolve();
  try {
    await migrateToLatest(database);
    await work({ test, database, holder, held: (then) => (release = then) });
  } finally {
    await release();
    await holder.destroy();
    await database.destroy();
    await test.drop();
  }
}

for (const dialect of serverDialectsUnderTest()) {
  describe(`retries of a write to a customer locked elsewhere (${dialect})`, () => {
    it("start no attempt once maxElapsedMs has passed since the first", async () => {
      // A customer's row lock held outside the service (a hand-run SELECT … FOR UPDATE): every
      // attempt waits a lock timeout on a pooled connection. Without a bound on the time, the
      // request kept its connection for 12 attempts, long after its client had been answered.
      await withLocksHeld(dialect, async ({ database, holder, held }) => {
        const plain = new IdentifyService(new SqlContactStore(database), new NoCache());
        const { customer } = await plain.identify({
          email: "held@example.com",
          phoneNumber: "5550001",
        });
        held(
          await holdTransaction(holder, (trx) =>
            sql`select id from ${sql.ref("Contact")} where id = ${customer.primaryContactId} for update`.execute(
              trx,
            ),
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
      });
    });

    it("fails, rather than waits without end, while the table is locked by hand", async () => {
      // LOCK TABLE(S) by an operator, or an ALTER TABLE queued behind a long transaction: every
      // statement on the table waits for the table's lock. PostgreSQL bounds that wait by its
      // lock_timeout; MariaDB by lock_wait_timeout, a day or a year by default.
      await withLocksHeld(dialect, async ({ test, database, holder, held }) => {
        if (dialect === "mysql") {
          const connection = await createConnection(test.url);
          await connection.query("lock tables Contact write");
          held(async () => {
            await connection.query("unlock tables");
            await connection.end();
          });
        } else {
          held(
            await holdTransaction(holder, (trx) =>
              sql`lock table ${sql.ref("Contact")} in access exclusive mode`.execute(trx),
            ),
          );
        }
        const store = new SqlContactStore(database, {
          maxAttempts: 12,
          baseDelayMs: 1,
          maxDelayMs: 5,
          maxElapsedMs: 600,
        });
        const service = new IdentifyService(store, new NoCache());
        const started = Date.now();
        const outcome = await Promise.race([
          service.identify({ email: "locked@example.com", phoneNumber: "5550003" }).then(
            () => "answered",
            (error: unknown) => (error instanceof DatabaseError ? "failed" : String(error)),
          ),
          sleep(8000).then(() => "still waiting after 8 s"),
        ]);
        assert.equal(outcome, "failed");
        assert.ok(Date.now() - started < 5000, `${Date.now() - started} ms`);
      });
    });
  });
}
