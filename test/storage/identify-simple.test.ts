import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CompiledQuery, sql } from "kysely";
import pg from "pg";
import { MemoryCustomerCache } from "../../src/cache/memory.cache.js";
import { NoCache } from "../../src/cache/customer-cache.js";
import { identifierKeys } from "../../src/domain/contact.js";
import type { IdentifyRequest } from "../../src/domain/contact.js";
import { planIdentify } from "../../src/domain/reconcile.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import type { SimpleIdentify } from "../../src/service/contact-store.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase } from "../../src/storage/database.js";
import type { Database } from "../../src/storage/database.js";
import { migrateToLatest } from "../../src/storage/migrate.js";
import { allContacts, createTestDatabase, dialectsUnderTest } from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";

/** The store as MySQL/MariaDB and SQLite run it: every write in a locked transaction. */
class LockedTransactionsOnly extends SqlContactStore {
  override get identifiesSimpleRequests(): boolean {
    return false;
  }
}

/** Counts the requests `identifySimple` answered itself (not left to the locked transaction). */
class CountingStore extends SqlContactStore {
  answered = 0;

  override async identifySimple(
    request: IdentifyRequest,
    now: number,
    expected: readonly number[] | null = null,
  ): ReturnType<SqlContactStore["identifySimple"]> {
    const result = await super.identifySimple(request, now, expected);
    if (result !== null) {
      this.answered++;
    }
    return result;
  }
}

/** A promise that `fire` resolves. */
function signal(): { fired: Promise<void>; fire: () => void } {
  let fire = () => {};
  const fired = new Promise<void>((resolve) => {
    fire = resolve;
  });
  return { fired, fire };
}

/** A small seeded generator, so that a failure can be run again. */
function generator(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state / 2147483648;
  };
}

/**
 * Runs `work` while a locked transaction of `store` holds the identifier locks of `keys` (and no
 * customer's); the transaction ends, having written nothing, once `work` settles.
 */
async function whileLocked<T>(
  store: SqlContactStore,
  keys: readonly string[],
  request: IdentifyRequest,
  work: () => Promise<T>,
): Promise<T> {
  const released = signal();
  const locked = signal();
  const holder = store.withLockedTransaction(keys, async (tx) => {
    await tx.lockAndFind([], request);
    locked.fire();
    await released.fired;
  });
  try {
    await locked.fired;
    return await work();
  } finally {
    released.fire();
    await holder;
  }
}

/** How many statements are waiting for a lock in `database` (a row lock, or a named one). */
async function waitingForLocks(database: Database): Promise<number> {
  if (database.dialect === "postgres") {
    const { rows } = await sql<{ n: number }>`
      select count(*)::int as n from pg_locks where not granted`.execute(database.db);
    return rows[0]?.n ?? 0;
  }
  // MySQL/MariaDB: GET_LOCK waits in the state "User lock"; a row lock wait is a transaction in
  // LOCK WAIT. Only this database's sessions: other tests share the server.
  const sessions = await sql<{ id: number | string; state: string | null }>`
    select id, state from information_schema.processlist where db = database()`.execute(
    database.db,
  );
  const waits = await sql<{ thread: number | string }>`
    select trx_mysql_thread_id as thread from information_schema.innodb_trx
    where trx_state = 'LOCK WAIT'`.execute(database.db);
  const waiting = new Set(waits.rows.map((row) => Number(row.thread)));
  return sessions.rows.filter((row) => row.state === "User lock" || waiting.has(Number(row.id)))
    .length;
}

/** Requests that, sent in turn to a new database, take each way through identity_identify. */
const EACH_OUTCOME = [
  ["a@example.com", "5550001"],
  ["a@example.com", "5550001"],
  ["b@example.com", "5550001"],
  ["c@example.com", "5550002"],
  ["c@example.com", "5550001"],
  [null, "5550002"],
] as const;
const EACH_OUTCOME_ANSWERS = [
  "created",
  "unchanged",
  "secondary_added",
  "created",
  "fallback",
  "unchanged",
];

const SERVERS = [
  {
    dialect: "postgres",
    name: "PostgreSQL's identity_identify function (migrations 0006 and 0008)",
  },
  { dialect: "mysql", name: "MySQL/MariaDB's identity_identify procedure (migration 0007)" },
] as const;

for (const { dialect, name } of SERVERS.filter((server) =>
  dialectsUnderTest().includes(server.dialect),
)) {
  describe(name, () => {
    const tests: TestDatabase[] = [];
    const databases: Database[] = [];

    /** A fresh migrated database; `sent` collects the statements sent to it. */
    async function open(
      lockTimeoutMs = 5000,
    ): Promise<{ test: TestDatabase; database: Database; sent: string[] }> {
      const test = await createTestDatabase(dialect);
      tests.push(test);
      const sent: string[] = [];
      const database = openDatabase(test.target, {
        poolSize: 3,
        lockTimeoutMs,
        onStatement: (sql) => {
          sent.push(sql);
        },
      });
      databases.push(database);
      await migrateToLatest(database);
      return { test, database, sent };
    }

    after(async () => {
      await Promise.all(databases.map((database) => database.destroy()));
      await Promise.all(tests.map((test) => test.drop()));
    });

    it("answers and writes what the locked transaction does, request after request", async () => {
      const { database: simple, sent } = await open();
      const { database: locked } = await open();
      // The cache in front, so that writes go at once (a lead, or a cache that knows nothing)
      // and after a read (a ticket); a second service without a cache reads first every time.
      const services = (store: SqlContactStore) => [
        new IdentifyService(store, new MemoryCustomerCache({ ttlSeconds: 3600, maxEntries: 50 })),
        new IdentifyService(store, new NoCache()),
      ];
      const counting = new CountingStore(simple);
      const [simpleCached, simpleUncached] = services(counting);
      const [lockedCached, lockedUncached] = services(new LockedTransactionsOnly(locked));
      const random = generator(6);
      const pick = (prefix: string) =>
        random() < 0.15 ? null : `${prefix}${Math.floor(random() * 40)}`;
      const outcomes = new Set<string>();
      for (let i = 0; i < 400; i++) {
        if (i === 200) {
          // An operator soft-deletes a primary by hand: its customer needs a promotion, which
          // only the locked transaction does.
          for (const database of [simple, locked]) {
            await database.db
              .updateTable("Contact")
              .set({ deletedAt: new Date() })
              .where("linkedId", "is", null)
              .where("id", "=", 1)
              .execute();
          }
        }
        const email = pick("e");
        const phone = pick("p");
        const request: IdentifyRequest = {
          email: email === null ? null : `${email}@example.com`,
          phoneNumber: email === null && phone === null ? "5550000" : phone,
        };
        const cached = random() < 0.5;
        const ours = await (cached ? simpleCached : simpleUncached)?.identify(request);
        const theirs = await (cached ? lockedCached : lockedUncached)?.identify(request);
        assert.ok(ours !== undefined && theirs !== undefined);
        assert.deepEqual(
          ours.customer,
          theirs.customer,
          `request ${i}: ${JSON.stringify(request)}`,
        );
        assert.equal(ours.outcome, theirs.outcome, `request ${i}`);
        outcomes.add(ours.outcome);
      }
      const rows = async (database: Database) =>
        (await allContacts(database)).map((row) => ({
          id: row.id,
          email: row.email,
          phoneNumber: row.phoneNumber,
          linkedId: row.linkedId,
          linkPrecedence: row.linkPrecedence,
          deleted: row.deletedAt !== null,
        }));
      assert.deepEqual(await rows(simple), await rows(locked));
      assert.deepEqual([...outcomes].sort(), ["created", "merged", "secondary_added", "unchanged"]);
      // It answered most writes, and left merges to the locked transaction.
      const transactions = sent.filter((sql) => /^(begin|call identity_begin\b)/i.test(sql)).length;
      assert.ok(counting.answered > 100, `answered by identity_identify: ${counting.answered}`);
      assert.ok(transactions > 10, `locked transactions: ${transactions}`);
    });

    /** Resolves once some statement waits for a lock, so a race is set up. */
    async function someoneWaits(database: Database): Promise<void> {
      // InnoDB refreshes information_schema.innodb_trx only when it was last read more than
      // 100 ms before: polled faster, it never shows the wait.
      const pause = dialect === "mysql" ? 150 : 20;
      for (let tries = 0; tries < 5000 / pause; tries++) {
        if ((await waitingForLocks(database)) > 0) {
          return;
        }
        await sleep(pause);
      }
      assert.fail("no statement waited for a lock");
    }

    /**
     * Sends `request` to identifySimple while a locked transaction of `holder` holds its locks
     * (its identifiers and `customers`); once the request waits for a lock, the holder commits
     * its plan. The request's answer. `expected`: the customer identifySimple is told to expect.
     */
    async function identifyWhileHeld(
      database: Database,
      holder: IdentifyRequest,
      customers: readonly number[],
      request: IdentifyRequest,
      expected: readonly number[] | null,
    ): Promise<SimpleIdentify | null> {
      const store = new SqlContactStore(database);
      const released = signal();
      const locked = signal();
      const done = store.withLockedTransaction(identifierKeys(holder), async (tx) => {
        const rows = await tx.lockAndFind(customers, holder);
        locked.fire();
        await released.fired;
        const now = Date.now();
        return tx.commit(planIdentify(holder, rows, now), now, holder);
      });
      await locked.fired;
      const waiting = store.identifySimple(request, Date.now(), expected);
      await someoneWaits(database);
      released.fire();
      await done;
      return waiting;
    }

    // Told what to expect, the procedure and the function (migrations 0007 and 0008) lock
    // before they read.
    for (const told of [false, true]) {
      const expecting = told ? ", told what to expect" : "";

      it(`leaves a write to the locked transaction when a customer appeared under its identifier lock${expecting}`, async () => {
        const { database } = await open();
        // Another request creates the customer of doc@ while this one waits for doc@'s lock.
        const answer = await identifyWhileHeld(
          database,
          { email: "doc@example.com", phoneNumber: null },
          [],
          { email: "doc@example.com", phoneNumber: "5551955" },
          told ? [] : null,
        );
        // It expected no customer (read or told): it locked none, so it writes none.
        assert.equal(answer, null);
        const rows = await allContacts(database);
        assert.deepEqual(
          rows.map((row) => [row.email, row.phoneNumber]),
          [["doc@example.com", null]],
        );
      });

      it(`writes nothing under a customer merged away while it waited for that customer's lock${expecting}`, async () => {
        const { database } = await open();
        const store = new SqlContactStore(database);
        const older = await store.identifySimple(
          { email: "older@example.com", phoneNumber: "5550001" },
          Date.now(),
        );
        const newer = await store.identifySimple(
          { email: "newer@example.com", phoneNumber: "5550002" },
          Date.now(),
        );
        assert.ok(older !== null && newer !== null);
        // A bridge holds both customers' locks, then merges the newer under the older.
        const answer = await identifyWhileHeld(
          database,
          { email: "older@example.com", phoneNumber: "5550002" },
          [older.primaryId, newer.primaryId],
          { email: "newer@example.com", phoneNumber: "5550003" },
          told ? [newer.primaryId] : null,
        );
        assert.equal(answer, null);
        const rows = await allContacts(database);
        assert.deepEqual(
          rows.map((row) => [row.id, row.linkedId]),
          [
            [older.primaryId, null],
            [newer.primaryId, older.primaryId],
          ],
        );
      });
    }

    it("leaves a write to the locked transaction when what it was told to expect is stale", async () => {
      const { database } = await open();
      const store = new SqlContactStore(database);
      const doc = await store.identifySimple(
        { email: "doc@example.com", phoneNumber: "5551955" },
        Date.now(),
      );
      assert.equal(doc?.outcome, "created");
      const request = { email: "marty@example.com", phoneNumber: "5551955" };
      // Told no customer (a cache that knew none), it locks none, then finds doc's customer.
      assert.equal(await store.identifySimple(request, Date.now(), []), null);
      // Told another customer than the request's (a lead from a stale entry): it locks that one,
      // then finds doc's customer, which it has not locked.
      const biff = await store.identifySimple(
        { email: "biff@example.com", phoneNumber: null },
        Date.now(),
      );
      assert.ok(biff !== null);
      assert.equal(await store.identifySimple(request, Date.now(), [biff.primaryId]), null);
      // Told an id that is no live primary: its lock finds no row.
      assert.equal(await store.identifySimple(request, Date.now(), [biff.primaryId + 1]), null);
      assert.equal((await allContacts(database)).length, 2);
      // Told the right one, it writes.
      const added = await store.identifySimple(request, Date.now(), [doc.primaryId]);
      assert.equal(added?.outcome, "secondary_added");
      assert.deepEqual(
        (await allContacts(database)).map((row) => [row.email, row.linkedId]),
        [
          ["doc@example.com", null],
          ["biff@example.com", null],
          ["marty@example.com", doc.primaryId],
        ],
      );
    });

    it("never makes a secondary older than its customer's newest row", async () => {
      const { database } = await open();
      const store = new SqlContactStore(database);
      const first = await store.identifySimple(
        { email: "doc@example.com", phoneNumber: null },
        Date.parse("2026-01-02T00:00:00Z"),
      );
      assert.equal(first?.outcome, "created");
      // A clock behind the customer's row (another instance's clock, say).
      const second = await store.identifySimple(
        { email: "doc@example.com", phoneNumber: "5551955" },
        Date.parse("2026-01-01T00:00:00Z"),
      );
      assert.equal(second?.outcome, "secondary_added");
      // Each time is the service's plus the time the statement ran (under a second here).
      const [primary, secondary] = (await allContacts(database)).map((row) => row.createdAt);
      assert.ok(primary !== undefined && secondary !== undefined);
      const late = primary - Date.parse("2026-01-02T00:00:00Z");
      assert.ok(late >= 0 && late < 1000, `the primary is ${late} ms late`);
      assert.equal(secondary, primary);
    });

    it("writes nothing and leaves the request to the locked transaction when an identifier lock times out", async () => {
      const { database } = await open(200);
      const store = new SqlContactStore(database);
      const request = { email: "marty@example.com", phoneNumber: "5551985" };
      await whileLocked(store, identifierKeys(request), request, async () => {
        assert.equal(await store.identifySimple(request, Date.now()), null);
        assert.deepEqual(await allContacts(database), []);
      });
    });

    if (dialect === "postgres") {
      it("plans every statement inside it with the indexes, generic plans on a table never analyzed", async () => {
        const { test } = await open();
        // As the service's connections (storage/database.ts), with each statement of the function
        // planned once for any values, as after its first executions.
        const client = new pg.Client({
          connectionString: test.url,
          options: "-c enable_seqscan=off -c plan_cache_mode=force_generic_plan",
        });
        const plans: string[] = [];
        client.on("notice", (notice) => plans.push(notice.message ?? ""));
        await client.connect();
        try {
          await client.query("load 'auto_explain'");
          await client.query("set auto_explain.log_min_duration = 0");
          await client.query("set auto_explain.log_nested_statements = on");
          await client.query("set auto_explain.log_level = notice");
          const call = (email: string | null, phone: string | null) =>
            client.query("select outcome from identity_identify($1, $2, 1, 2, now())", [
              email,
              phone,
            ]);
          const outcomes: unknown[] = [];
          for (const [email, phone] of EACH_OUTCOME) {
            const { rows } = await call(email, phone);
            outcomes.push((rows as { outcome: string }[])[0]?.outcome);
          }
          assert.deepEqual(outcomes, EACH_OUTCOME_ANSWERS);
          // Told what to expect (migration 0008): locks first, reads under the locks only.
          const told = async (email: string, phone: string, expected: number | null) => {
            const { rows } = await client.query(
              "select id, outcome from identity_identify($1, $2, 1, 2, now(), true, $3)",
              [email, phone, expected],
            );
            const [row] = rows as { id: number | null; outcome: string }[];
            return { outcome: row?.outcome, id: row?.id ?? null };
          };
          const created = await told("d@example.com", "5550003", null);
          assert.deepEqual(
            [
              created.outcome,
              (await told("e@example.com", "5550003", created.id)).outcome,
              (await told("d@example.com", "5550003", created.id)).outcome,
              // A stale expectation: the request's customer exists.
              (await told("f@example.com", "5550003", null)).outcome,
            ],
            ["created", "secondary_added", "unchanged", "fallback"],
          );
          const inner = plans.filter(
            (plan) => /"Contact"/.test(plan) && !/identity_identify/.test(plan),
          );
          // The customers read, the customer lock and the insert, each at least once.
          assert.ok(
            inner.some((plan) => /for update/i.test(plan)),
            plans.join("\n"),
          );
          assert.ok(
            inner.some((plan) => /with matched/i.test(plan)),
            plans.join("\n"),
          );
          assert.ok(
            inner.some((plan) => /Insert on "Contact"/.test(plan)),
            plans.join("\n"),
          );
          for (const plan of inner) {
            assert.doesNotMatch(plan, /Seq Scan on "Contact"/, plan);
          }
        } finally {
          await client.end();
        }
      });
    }

    if (dialect === "mysql") {
      it("reads through the indexes inside it: no row read by a scan", async () => {
        const { database } = await open();
        // Enough rows that a scan shows (the statements test does the same for the others).
        const service = new IdentifyService(new SqlContactStore(database), new NoCache());
        for (let i = 0; i < 300; i++) {
          await service.identify({ email: `filler${i}@example.com`, phoneNumber: `+1800${i}` });
        }
        // EXPLAIN takes no CALL: the session's handler counters tell how the rows were read.
        // Handler_read_rnd_next counts the rows a scan reads; reads through an index count in
        // Handler_read_key and Handler_read_next (a scan of a whole index: hundreds of them).
        await database.db.connection().execute(async (conn) => {
          const counters = async () => {
            const { rows } = await conn.executeQuery<{ Variable_name: string; Value: string }>(
              CompiledQuery.raw("show session status like 'Handler_read%'"),
            );
            return new Map(rows.map((row) => [row.Variable_name, Number(row.Value)]));
          };
          const call = async (
            email: string | null,
            phone: string,
            expected: readonly number[] | null,
          ) => {
            const before = await counters();
            const { rows } = await conn.executeQuery<[{ id: number; outcome: string }[]]>(
              CompiledQuery.raw("call identity_identify(?, ?, 'first', 'second', 5, ?, ?, ?)", [
                email,
                phone,
                new Date(),
                expected === null ? 0 : 1,
                expected?.[0] ?? null,
              ]),
            );
            const after = await counters();
            const read = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0);
            const at = `${email} ${phone} ${JSON.stringify(expected)}`;
            assert.equal(read("Handler_read_rnd_next"), 0, `${at}: a scan`);
            assert.ok(read("Handler_read_key") > 0, `${at}: no index read`);
            assert.ok(read("Handler_read_next") < 30, `${at}: ${read("Handler_read_next")} read`);
            const [set] = rows as unknown as [{ id: number; outcome: string }[]];
            return { outcome: set[0]?.outcome, id: set[0]?.id ?? null };
          };
          // Read first, then lock (not told what to expect).
          const outcomes: unknown[] = [];
          for (const [email, phone] of EACH_OUTCOME) {
            outcomes.push((await call(email, phone, null)).outcome);
          }
          assert.deepEqual(outcomes, EACH_OUTCOME_ANSWERS);
          // Told what to expect: locks first, reads under the locks only.
          const created = await call("d@example.com", "5550003", []);
          const customer = created.id === null ? [] : [created.id];
          assert.deepEqual(
            [
              created.outcome,
              (await call("e@example.com", "5550003", customer)).outcome,
              (await call("d@example.com", "5550003", customer)).outcome,
              // A stale expectation: the request's customer exists.
              (await call("f@example.com", "5550003", [])).outcome,
            ],
            ["created", "secondary_added", "unchanged", "fallback"],
          );
        });
      });

      it("leaves no transaction or lock on its connection when a GET_LOCK wait is interrupted", async () => {
        const { database: admin, test } = await open();
        // One connection, so that what the CALL left on it is what the next query finds.
        const database = openDatabase(test.target, { poolSize: 1, lockTimeoutMs: 5000 });
        databases.push(database);
        const request = { email: "doc@example.com", phoneNumber: "5551955" };
        // Another instance holds one of the request's two identifier locks.
        for (const held of identifierKeys(request)) {
          await whileLocked(new SqlContactStore(admin), [held], request, async () => {
            const waiting = new SqlContactStore(database).identifySimple(request, Date.now());
            await someoneWaits(admin);
            // An operator's KILL QUERY, or max_statement_time: GET_LOCK answers NULL, and the
            // CALL stops past its handler.
            const { rows } = await sql<{ id: number }>`
              select id from information_schema.processlist
              where db = database() and state = 'User lock' and info like 'call identity_identify%'`.execute(
              admin.db,
            );
            assert.equal(rows.length, 1);
            await sql`kill query ${sql.raw(String(Number(rows[0]?.id)))}`.execute(admin.db);
            await assert.rejects(waiting);
          });
          const { rows } = await sql<{ tx: number | string; locks: number | string }>`
            select @@in_transaction as tx, release_all_locks() as locks`.execute(database.db);
          assert.deepEqual(
            rows.map((row) => [Number(row.tx), Number(row.locks)]),
            [[0, 0]],
            `holding ${held}`,
          );
        }
      });

      it("runs in UTC sessions, so that daylight saving does not move its times", async () => {
        const { database } = await open();
        const { rows } = await sql<{ zone: string }>`
          select @@session.time_zone as zone`.execute(database.db);
        assert.deepEqual(rows, [{ zone: "+00:00" }]);
      });
    }
  });
}
