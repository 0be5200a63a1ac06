import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { sql } from "kysely";
import { identifierDigest, identifierKeys } from "../../src/domain/contact.js";
import type { Customer, IdentifyRequest } from "../../src/domain/contact.js";
import { planIdentify } from "../../src/domain/reconcile.js";
import type { ReconcilePlan } from "../../src/domain/reconcile.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import type { IdentifyResult } from "../../src/service/identify.service.js";
import { NoCache } from "../../src/cache/customer-cache.js";
import { MemoryCustomerCache } from "../../src/cache/memory.cache.js";
import { retryReason, SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase, parseDatabaseUrl } from "../../src/storage/database.js";
import type { Database } from "../../src/storage/database.js";
import { migrateToLatest } from "../../src/storage/migrate.js";
import { DatabaseError } from "../../src/storage/errors.js";
import {
  allContacts,
  databaseForSuite,
  dialectsUnderTest,
  insertContact,
  migratedDatabaseForSuite,
  serverDialectsUnderTest,
} from "../support/databases.js";

describe("SqlContactStore write transactions", () => {
  // The read before a write can succeed and the pool then fail to give a connection (a failover,
  // a pool timeout): that is a database failure like any other (the masked 500 of the database),
  // not an unknown error.
  for (const url of ["postgres://root@127.0.0.1:1/nowhere", "mysql://root@127.0.0.1:1/nowhere"]) {
    const target = parseDatabaseUrl(url);
    it(`rejects with a DatabaseError when no connection can be had (${target.dialect})`, async () => {
      const database = openDatabase(target, { poolSize: 1, lockTimeoutMs: 1000 });
      let worked = false;
      try {
        const store = new SqlContactStore(database, {
          maxAttempts: 1,
          baseDelayMs: 1,
          maxDelayMs: 1,
        });
        await assert.rejects(
          store.withLockedTransaction(["email:a@example.com"], () => {
            worked = true;
            return Promise.resolve();
          }),
          (error: unknown) =>
            error instanceof DatabaseError && error.message.startsWith("acquiring a connection"),
        );
        assert.equal(worked, false);
      } finally {
        await database.destroy();
      }
    });
  }
});

const NO_RETRY = { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1 };

/**
 * Creates two customers (by email), then runs in a transaction the merge `planOf` makes of them,
 * which must fail while writing; afterwards the tables must be as they were.
 */
async function assertFailedMergeKeepsNothing(
  database: Database,
  [first, second]: readonly [string, string],
  planOf: (winner: number, merged: number) => ReconcilePlan,
): Promise<void> {
  const store = new SqlContactStore(database, NO_RETRY);
  const service = new IdentifyService(store, new NoCache());
  const older = await service.identify({ email: first, phoneNumber: null });
  const newer = await service.identify({ email: second, phoneNumber: null });
  const winner = older.customer.primaryContactId;
  const merged = newer.customer.primaryContactId;
  const before = await allContacts(database);
  const request: IdentifyRequest = { email: first, phoneNumber: null };
  await assert.rejects(
    store.withLockedTransaction([`email:${first}`], async (tx) => {
      await tx.lockAndFind([winner, merged], request);
      return tx.commit(planOf(winner, merged), Date.now(), request);
    }),
    (error: unknown) =>
      error instanceof DatabaseError && error.message.startsWith("writing a plan"),
  );
  // SQLite: a write left behind would run after the batch's COMMIT.
  await sleep(50);
  assert.deepEqual(await allContacts(database), before);
  assert.deepEqual(await database.db.selectFrom("ContactMerge").selectAll().execute(), []);
}

/** Every dialect: a failing write of a plan fails the transaction, and nothing of it is kept. */
for (const dialect of dialectsUnderTest()) {
  describe(`SqlContactStore plans that fail (${dialect})`, () => {
    const suite = migratedDatabaseForSuite(dialect);

    it("commits nothing of a merge whose last statement fails, with no insert to wait for", async () => {
      // The relink and log of the newer customer succeed; the winner's own merge log breaks the
      // log's CHECK (winnerId <> mergedId).
      await assertFailedMergeKeepsNothing(
        suite.database,
        ["first@example.com", "second@example.com"],
        (winner, merged) => ({
          outcome: "merged",
          winnerId: winner,
          promotedFrom: null,
          relinkGroups: [merged, winner],
          insert: null,
          members: [],
        }),
      );
    });
  });
}

describe("SqlContactStore plans that fail (sqlite, the insert)", () => {
  const suite = migratedDatabaseForSuite("sqlite");

  // SQLite alone checks linkedId as a foreign key: an insert under a primary that does not exist
  // fails, and the wait for the queued writes rejects too (no unhandled rejection).
  it("rejects a plan whose insert fails and keeps nothing", async () => {
    await assertFailedMergeKeepsNothing(
      suite.database,
      ["third@example.com", "fourth@example.com"],
      (_winner, merged) => ({
        outcome: "secondary_added",
        winnerId: merged + 1_000_000,
        promotedFrom: null,
        relinkGroups: [],
        insert: { email: "orphan@example.com", phoneNumber: null, createdAt: 1 },
        members: [],
      }),
    );
  });
});

/**
 * On PostgreSQL the statements of a transaction go out without waiting for each other's answers
 * (pipelined); elsewhere one after another. Either way a failure must be the transaction's first
 * error, and nothing of a failed transaction may be committed.
 */
for (const dialect of serverDialectsUnderTest()) {
  describe(`SqlContactStore failures inside a transaction (${dialect})`, () => {
    const suite = databaseForSuite(dialect, async (test) => {
      // MySQL's named locks wait whole seconds: at least 1.
      const database = openDatabase(test.target, { poolSize: 2, lockTimeoutMs: 300 });
      await migrateToLatest(database);
      return database;
    });

    it("fails with the lock's timeout, not a later statement's error, and the connection goes on", async () => {
      const { database } = suite;
      const store = new SqlContactStore(database, NO_RETRY);
      const request: IdentifyRequest = { email: "held@example.com", phoneNumber: null };
      let release = (): void => undefined;
      const released = new Promise<void>((resolve) => {
        release = resolve;
      });
      let holding = (): void => undefined;
      const held = new Promise<void>((resolve) => {
        holding = resolve;
      });
      const holder = store.withLockedTransaction(["email:held@example.com"], async (tx) => {
        await tx.lockAndFind([], request);
        holding();
        await released;
      });
      await held;
      let seen: unknown = null;
      await assert.rejects(
        store.withLockedTransaction(["email:held@example.com"], async (tx) => {
          try {
            // Sent with BEGIN and the identifier locks, before the lock is refused.
            await tx.lockAndFind([1, 2], request);
          } catch (error) {
            seen = error;
            throw error;
          }
          assert.fail("read without the identifier lock");
        }),
        (error: unknown) =>
          error instanceof DatabaseError &&
          error.message.startsWith("locking identifiers") &&
          retryReason(error) === "lock_timeout",
      );
      assert.ok(seen instanceof DatabaseError && seen.message.startsWith("locking identifiers"));
      release();
      await holder;
      // Both connections of the pool still work (neither is left in a transaction).
      const service = new IdentifyService(store, new NoCache());
      const answers = await Promise.all([
        service.identify({ email: "after1@example.com", phoneNumber: null }),
        service.identify({ email: "after2@example.com", phoneNumber: null }),
      ]);
      assert.equal(answers.length, 2);
    });

    if (dialect === "mysql") {
      it("leaves no named lock held after a commit or a failure (identity_commit; ROLLBACK)", async () => {
        const { database } = suite;
        const request: IdentifyRequest = { email: "freed@example.com", phoneNumber: "5550009999" };
        // The lock names of the store (contact.store.ts, lockKeys), asked of another session.
        const free = async (): Promise<number[]> => {
          const names = identifierKeys(request).map(
            (key) => `identity:${identifierDigest(key).slice(0, 48)}`,
          );
          const { rows } = await sql<{ free: number }>`
            select is_free_lock(${names[0]}) as free union all
            select is_free_lock(${names[1]})`.execute(database.db);
          return rows.map((row) => row.free);
        };
        const store = new SqlContactStore(database, NO_RETRY);
        let heldInside: number[] = [];
        await store.withLockedTransaction(identifierKeys(request), async (tx) => {
          const rows = await tx.lockAndFind([], request);
          heldInside = await free();
          const plan = planIdentify(request, rows, Date.now());
          return tx.commit(plan, Date.now(), request);
        });
        assert.deepEqual(heldInside, [0, 0], "held while the transaction runs");
        assert.deepEqual(await free(), [1, 1], "released by identity_commit");
        await assert.rejects(
          store.withLockedTransaction(identifierKeys(request), async (tx) => {
            await tx.lockAndFind([], request);
            throw new Error("the work fails");
          }),
          /the work fails/,
        );
        assert.deepEqual(await free(), [1, 1], "released after ROLLBACK");
      });
    }

    it("locks only rows that are still primaries: a customer merged away is left to its holder", async () => {
      // A stale cache lead or read can name a customer merged away since; its row is then a
      // secondary that the holder of its customer relinks. Holding it while waiting for that
      // customer (found next, with a higher id) deadlocked.
      const { database } = suite;
      const now = new Date();
      const insert = async (email: string, linkedId: number | null): Promise<number> => {
        return insertContact(database, { email, phoneNumber: null, linkedId, createdAt: now });
      };
      const first = await insert("stale-first@example.com", null);
      const second = await insert("stale-second@example.com", null);
      const owner = await insert("stale-owner@example.com", null);
      const merged = await insert("stale-merged@example.com", owner);
      // Asked of another connection, without waiting.
      const lockedElsewhere = async (id: number): Promise<boolean> => {
        try {
          await database.db.transaction().execute(async (trx) => {
            await sql`select ${sql.ref("id")} from ${sql.table("Contact")}
              where ${sql.ref("id")} = ${id} for update nowait`.execute(trx);
          });
          return false;
        } catch (error) {
          assert.match(String(error), /could not obtain lock|lock wait timeout/i);
          return true;
        }
      };
      const request: IdentifyRequest = { email: "stale-merged@example.com", phoneNumber: null };
      const store = new SqlContactStore(database, NO_RETRY);
      const held: boolean[][] = [];
      // MySQL/MariaDB: the first two customers are locked inside identity_begin, a third by a
      // statement of its own.
      for (const customers of [[owner], [merged], [first, second, merged]]) {
        await store.withLockedTransaction(identifierKeys(request), async (tx) => {
          await tx.lockAndFind(customers, request);
          held.push(await Promise.all(customers.map(lockedElsewhere)));
        });
      }
      assert.deepEqual(held, [[true], [false], [true, true, false]]);
    });

    /**
     * A holds P and merges it under Q, then commits while B (holding W) waits for Q and the
     * service's transaction for P; B then merges Q's customer (P's row among its rows) under W.
     * The service gets P's lock when the row is no longer a primary, which PostgreSQL keeps: had
     * it then waited for another customer (found by its read, or the next lock of the same
     * round), B and it would deadlock. Answers the service's customer (W's, asserted) and the
     * reasons of its retries (no deadlock among them, asserted).
     */
    async function mergeWhileLocked(scenario: {
      /** Tells this test's rows from the others' in the suite's database. */
      tag: number;
      /** The order the rows are inserted in (their ids): P 1 hour old, Q 2, W (B's winner) 3. */
      order: readonly ("p" | "q" | "w")[];
      request: IdentifyRequest;
    }): Promise<{ id: (name: string) => number; customer: Customer; reasons: string[] }> {
      const target = suite.test.target;
      const mine = openDatabase(target, { poolSize: 2, lockTimeoutMs: 10_000 });
      const others = openDatabase(target, { poolSize: 3, lockTimeoutMs: 10_000 });
      let commitA = (): void => undefined;
      const aMayCommit = new Promise<void>((resolve) => {
        commitA = resolve;
      });
      let a: Promise<void> = Promise.resolve();
      let b: Promise<void> = Promise.resolve();
      let answer: Promise<IdentifyResult> | null = null;
      try {
        const ids: Record<string, number> = {};
        const ages = { p: 1, q: 2, w: 3 };
        for (const name of scenario.order) {
          const ageHours = ages[name];
          const at = new Date(Date.now() - ageHours * 3_600_000);
          ids[name] = await insertContact(others, {
            email: `${name}${scenario.tag}@example.com`,
            phoneNumber: `55${scenario.tag}${String(ageHours).padStart(7, "0")}`,
            linkedId: null,
            createdAt: at,
          });
        }
        const id = (name: string): number => ids[name] ?? assert.fail(`no row ${name}`);
        const ref = (column: string) => sql.ref(column);
        const contact = sql.table("Contact");
        // The store's own customer lock (lockCustomer): on MariaDB a lock by id alone skips the
        // linkedId index entry that the service's range lock takes first, and B's relink of Q
        // and the service's wait for Q then deadlocked on it (a test artifact, seen once in 45).
        const lock = (row: number) =>
          dialect === "mysql"
            ? sql`select ${ref("id")} from ${contact} where ${ref("linkedId")} is null
                and ${ref("id")} >= ${row} and ${ref("id")} <= ${row} for update`
            : sql`select ${ref("id")} from ${contact}
                where ${ref("linkedId")} is null and ${ref("id")} = ${row} for update`;
        const relink = (winner: number, group: number) => sql`update ${contact}
          set ${ref("linkedId")} = ${winner}, ${ref("linkPrecedence")} = 'secondary'
          where ${ref("id")} = ${group} or ${ref("linkedId")} = ${group}`;
        // Sessions of the test database waiting for a row lock, asked of the server (MariaDB
        // lists such a session's statement, but not always its transaction in innodb_trx).
        const waiting = async (): Promise<number> => {
          const query =
            dialect === "mysql"
              ? sql<{ n: number | string }>`select count(*) as n from information_schema.processlist
                  where db = database() and id <> connection_id() and info like '%for update%'`
              : sql<{ n: number | string }>`select count(*)::int as n from pg_stat_activity
                  where datname = current_database() and wait_event_type = 'Lock'`;
          const { rows } = await query.execute(others.db);
          return Number(rows[0]?.n ?? 0);
        };
        const [p, q, w] = [id("p"), id("q"), id("w")];

        let aHolds = (): void => undefined;
        const aHeld = new Promise<void>((resolve) => {
          aHolds = resolve;
        });
        a = others.db.transaction().execute(async (trx) => {
          await lock(p).execute(trx);
          await relink(q, p).execute(trx);
          aHolds();
          await aMayCommit;
        });
        await Promise.race([aHeld, a]);
        b = others.db.transaction().execute(async (trx) => {
          await lock(w).execute(trx);
          await lock(q).execute(trx);
          await relink(w, q).execute(trx);
        });
        b.catch(() => undefined);
        const reasons: string[] = [];
        const store = new SqlContactStore(
          mine,
          { maxAttempts: 12, baseDelayMs: 1, maxDelayMs: 5 },
          { onRetry: (_attempt, _cause, reason) => reasons.push(reason) },
        );
        answer = new IdentifyService(store, new NoCache()).identify(scenario.request);
        answer.catch(() => undefined);
        // B waits for Q (A's foreign key check holds it), the service for P.
        for (let tries = 0; (await waiting()) < 2; tries++) {
          assert.ok(tries < 500, "B and the service never both waited for a lock");
          await sleep(10);
        }
        commitA();
        await a;
        await b;
        const { customer } = await answer;
        assert.ok(!reasons.includes("deadlock"), reasons.join(", "));
        assert.equal(customer.primaryContactId, w);
        return { id, customer, reasons };
      } finally {
        commitA();
        await Promise.allSettled([a, b, answer]);
        await mine.destroy();
        await others.destroy();
      }
    }

    it("does not wait for a customer found next while holding one merged away during its lock", async () => {
      // Ids P < Q < W: the service's read after P's lock finds Q. A new phone for P's customer: a
      // write, so a transaction that locks P.
      const { id, customer, reasons } = await mergeWhileLocked({
        tag: 1,
        order: ["p", "q", "w"],
        request: { email: "p1@example.com", phoneNumber: "5550001111" },
      });
      assert.ok(customer.phoneNumbers.includes("5550001111"));
      const secondaries = [...customer.secondaryContactIds].sort((x, y) => x - y);
      assert.deepEqual(secondaries.slice(0, 2), [id("p"), id("q")]);
      assert.equal(secondaries.length, 3);
      // On PostgreSQL the attempt that held P gave up before locking Q (MariaDB's range read
      // released P: no deadlock there without the check, which still starts over).
      assert.ok(reasons.includes("contention"), "the service started over without P");
    });

    it("does not take a round's next customer lock while holding one merged away during its lock", async () => {
      // Ids P < W < Q: the request (P's email, W's phone) bridges P and W, so one round locks P,
      // then W, which B holds while it waits for Q.
      const { id, customer } = await mergeWhileLocked({
        tag: 2,
        order: ["p", "w", "q"],
        request: { email: "p2@example.com", phoneNumber: "5520000003" },
      });
      assert.deepEqual(
        [...customer.secondaryContactIds].sort((x, y) => x - y),
        [id("p"), id("q")].sort((x, y) => x - y),
      );
    });

    it("counts a soft-deleted primary whose rows live on as a customer, not one merged away", async () => {
      // The cache names X1's customer (filled before an operator soft-deleted both primaries by
      // hand); the request also matches X2's. The transaction locks X1, its read finds X2 and
      // only X1's secondary: X1 is still a customer, so it goes on to lock X2 (judged merged
      // away, the two customers took turns being dropped until the retries ran out).
      const { database } = suite;
      const now = new Date();
      const row = (email: string, phoneNumber: string, linkedId: number | null) => ({
        email,
        phoneNumber,
        linkedId,
        createdAt: now,
      });
      const x1 = await insertContact(database, row("gone-x1@example.com", "5550007001", null));
      await insertContact(database, row("kept-s1@example.com", "5550007002", x1));
      const x2 = await insertContact(database, row("gone-x2@example.com", "5550007003", null));
      await insertContact(database, row("kept-s2@example.com", "5550007004", x2));
      const reasons: string[] = [];
      const store = new SqlContactStore(
        database,
        { maxAttempts: 12, baseDelayMs: 1, maxDelayMs: 5 },
        { onRetry: (_attempt, _cause, reason) => reasons.push(reason) },
      );
      const cache = new MemoryCustomerCache({ ttlSeconds: 3600, maxEntries: 100 });
      const service = new IdentifyService(store, cache);
      // The first answer hints the cache (its index), the second fills it.
      for (let round = 0; round < 2; round++) {
        const { customer } = await service.identify({
          email: "kept-s1@example.com",
          phoneNumber: null,
        });
        assert.equal(customer.primaryContactId, x1);
      }
      await database.db
        .updateTable("Contact")
        .set({ deletedAt: new Date() })
        .where("id", "in", [x1, x2])
        .execute();
      const request = { email: "kept-s1@example.com", phoneNumber: "5550007004" };
      assert.deepEqual((await cache.lookup(request)).lead, [x1]);
      try {
        const { outcome, customer } = await service.identify(request);
        assert.equal(outcome, "merged");
        assert.deepEqual(customer.emails.sort(), ["kept-s1@example.com", "kept-s2@example.com"]);
        assert.deepEqual(reasons, []);
      } finally {
        // The suite's other tests expect an empty merge log.
        await database.db.deleteFrom("ContactMerge").where("email", "=", request.email).execute();
      }
    });

    it("commits nothing of a plan whose last write fails", async () => {
      // The relink and the merge log succeed; the insert is longer than the column allows.
      await assertFailedMergeKeepsNothing(
        suite.database,
        ["older@example.com", "newer@example.com"],
        (winner, merged) => ({
          outcome: "merged",
          winnerId: winner,
          promotedFrom: null,
          relinkGroups: [merged],
          insert: { email: `${"x".repeat(300)}@example.com`, phoneNumber: null, createdAt: 1 },
          members: [],
        }),
      );
    });
  });
}
