import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CompiledQuery, sql } from "kysely";
import { NoCache } from "../../src/cache/customer-cache.js";
import { MemoryCustomerCache } from "../../src/cache/memory.cache.js";
import type { IdentifyRequest } from "../../src/domain/contact.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase } from "../../src/storage/database.js";
import type { Database, DialectName } from "../../src/storage/database.js";
import { migrateToLatest } from "../../src/storage/migrate.js";
import {
  createTestDatabase,
  dialectsUnderTest,
  explain,
  fullScan,
  insertContact,
} from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";

interface Statement {
  readonly sql: string;
  readonly parameters: readonly unknown[];
  /** Sent behind unanswered statements of its connection, in their round trip. */
  readonly pipelined: boolean;
}

/**
 * The statements each outcome sends, pinned: a change in the number of round trips must show up
 * here (and in the README's table).
 */
const EXPECTED: Record<string, Record<DialectName, number>> = {
  "repeat, cached": { sqlite: 0, mysql: 0, postgres: 0 },
  // SQLite: each batch's BEGIN and COMMIT are counted here, for a request alone in its batch; under
  // load every request of one event-loop turn shares them (group commit). Its read is of the
  // indexes and the kept answer (migration 0003).
  "repeat, not cached": { sqlite: 3, mysql: 1, postgres: 1 },
  // SQLite: the read of the kept answer, then the customers read in a batch of its own. Only
  // SQLite keeps answers: elsewhere the same as above.
  "repeat, no kept answer": { sqlite: 6, mysql: 1, postgres: 1 },
  // SQLite: every write transaction keeps the customer's answer (one more statement).
  // The servers: a write of at most one customer is one statement, `identity_identify`
  // (PostgreSQL's function, migration 0006; MySQL/MariaDB's procedure, migration 0007), sent at
  // once when the cache names one customer or nothing.
  "new customer": { sqlite: 8, mysql: 1, postgres: 1 },
  // The cache names the customer: no read before the transaction.
  "new secondary": { sqlite: 5, mysql: 1, postgres: 1 },
  // The UPDATE that relinks the merged customer, and the merge log's INSERT. MySQL/MariaDB: BEGIN,
  // the identifier locks and up to two customer locks are one CALL, COMMIT and the release of the
  // named locks another (migration 0004).
  merge: { sqlite: 6, mysql: 5, postgres: 8 },
  // Without the cache's lead, a read first (the servers: then `identity_identify`).
  "new secondary, not cached": { sqlite: 8, mysql: 2, postgres: 2 },
  "merge, not cached": { sqlite: 9, mysql: 6, postgres: 9 },
};

/**
 * The database round trips of each outcome, pinned. The servers send a write of at most one
 * customer as one statement. PostgreSQL pipelines the locked transaction of a merge: BEGIN, the
 * identifier locks, the customer lock and the read in one; the writes and COMMIT in another. A
 * second customer lock waits for the first one's answer (a customer merged away while its lock
 * waited must not be held while another lock waits: StaleCustomerError), so a merge makes one
 * round trip more. Elsewhere each statement is a round trip of its own (on
 * MySQL/MariaDB the two CALLs of migration 0004 each stand for several).
 */
const ROUND_TRIPS: Record<string, Record<DialectName, number>> = {
  "repeat, cached": { sqlite: 0, mysql: 0, postgres: 0 },
  "repeat, not cached": { sqlite: 3, mysql: 1, postgres: 1 },
  "repeat, no kept answer": { sqlite: 6, mysql: 1, postgres: 1 },
  "new customer": { sqlite: 8, mysql: 1, postgres: 1 },
  "new secondary": { sqlite: 5, mysql: 1, postgres: 1 },
  merge: { sqlite: 6, mysql: 5, postgres: 3 },
  "new secondary, not cached": { sqlite: 8, mysql: 2, postgres: 2 },
  "merge, not cached": { sqlite: 9, mysql: 6, postgres: 4 },
};

const VERBS = /^\s*(select|update|insert|delete|with)\b/i;

for (const dialect of dialectsUnderTest()) {
  describe(`statements on ${dialect}`, () => {
    let test: TestDatabase;
    let database: Database;
    let recording: Statement[] | null = null;
    let seq = 0;

    before(async () => {
      test = await createTestDatabase(dialect);
      database = openDatabase(test.target, {
        poolSize: 3,
        lockTimeoutMs: 5000,
        onStatement: (sql, parameters, pipelined) => {
          recording?.push({ sql, parameters, pipelined });
        },
      });
      await migrateToLatest(database);
      // Enough rows that a planner would rather scan than use a missing index.
      const service = new IdentifyService(new SqlContactStore(database), new NoCache());
      for (let i = 0; i < 300; i++) {
        await service.identify({
          email: `filler${i}@example.com`,
          phoneNumber: `+1800${String(i).padStart(6, "0")}`,
        });
      }
    });

    after(async () => {
      await database.destroy();
      await test.drop();
    });

    async function record(work: () => Promise<unknown>): Promise<Statement[]> {
      recording = [];
      await work();
      const statements = recording;
      recording = null;
      return statements;
    }

    function fresh(): { email: string; phone: string } {
      seq++;
      return {
        email: `s${seq}.${dialect}@example.com`,
        phone: `+1555${String(seq).padStart(6, "0")}`,
      };
    }

    /** Runs every outcome once for a fresh set of identifiers; returns the statements of each. */
    async function outcomes(): Promise<Record<string, Statement[]>> {
      const cache = new MemoryCustomerCache({ ttlSeconds: 3600, maxEntries: 1000 });
      const service = new IdentifyService(new SqlContactStore(database), cache);
      const uncached = new IdentifyService(new SqlContactStore(database), new NoCache());
      const a = fresh();
      const b = fresh();
      const c = fresh();
      const req = (email: string | null, phoneNumber: string | null): IdentifyRequest => ({
        email,
        phoneNumber,
      });
      const result: Record<string, Statement[]> = {};
      result["new customer"] = await record(() => service.identify(req(a.email, a.phone)));
      result["repeat, cached"] = await record(() => service.identify(req(a.email, a.phone)));
      result["repeat, not cached"] = await record(() => uncached.identify(req(a.email, a.phone)));
      if (dialect === "sqlite") {
        // A customer changed behind the service: its kept answer is gone (Concurrency design).
        await database.db.deleteFrom("CustomerAnswer").execute();
      }
      result["repeat, no kept answer"] = await record(() =>
        uncached.identify(req(a.email, a.phone)),
      );
      result["new secondary"] = await record(() => service.identify(req(b.email, a.phone)));
      await service.identify(req(c.email, c.phone));
      result.merge = await record(() => service.identify(req(a.email, c.phone)));
      const d = fresh();
      const e = fresh();
      const f = fresh();
      await uncached.identify(req(d.email, d.phone));
      result["new secondary, not cached"] = await record(() =>
        uncached.identify(req(e.email, d.phone)),
      );
      await uncached.identify(req(f.email, f.phone));
      result["merge, not cached"] = await record(() => uncached.identify(req(d.email, f.phone)));
      return result;
    }

    it("sends the pinned number of statements and round trips for each outcome", async () => {
      const sent = Object.entries(await outcomes());
      const pinned = (table: Record<string, Record<DialectName, number>>) =>
        Object.fromEntries(Object.entries(table).map(([o, byDialect]) => [o, byDialect[dialect]]));
      const statements = Object.fromEntries(sent.map(([o, list]) => [o, list.length]));
      assert.deepEqual(statements, pinned(EXPECTED));
      const roundTrips = Object.fromEntries(
        sent.map(([o, list]) => [o, list.filter((s) => !s.pipelined).length]),
      );
      assert.deepEqual(roundTrips, pinned(ROUND_TRIPS));
    });

    it("sends the same statement texts for different requests with the same outcome, values only as parameters", async () => {
      const first = await outcomes();
      const second = await outcomes();
      for (const outcome of Object.keys(first)) {
        assert.deepEqual(
          second[outcome]?.map((s) => s.sql),
          first[outcome]?.map((s) => s.sql),
          outcome,
        );
      }
      for (const statement of Object.values(first).flat()) {
        assert.doesNotMatch(statement.sql, /@example\.com|\+1555/, "no value in the text");
      }
    });

    it("reads each row once, even rows that chain (the read's two halves both hold one)", async () => {
      const { email: e1, phone: p1 } = fresh();
      const { email: e2 } = fresh();
      const { email: e3 } = fresh();
      const now = dialect === "sqlite" ? new Date().toISOString() : new Date();
      const insert = (email: string, phone: string | null, linkedId: number | null) =>
        insertContact(database, { email, phoneNumber: phone, linkedId, createdAt: now });
      // A chain the service never writes: third -> second -> first.
      const first = await insert(e1, p1, null);
      const second = await insert(e2, null, first);
      const third = await insert(e3, null, second);
      const rows = await new SqlContactStore(database).findCustomers({
        email: e3,
        phoneNumber: p1,
      });
      assert.deepEqual(
        rows.map((row) => row.id).sort((a, b) => a - b),
        [first, second, third],
      );
    });

    it("uses an index for every statement it sends (no full scan of Contact)", async () => {
      const statements = Object.values(await outcomes())
        .flat()
        // Inserts read nothing (MySQL's EXPLAIN calls them type ALL all the same).
        .filter(
          (s) => VERBS.test(s.sql) && /contact|answer/i.test(s.sql) && !/^\s*insert\b/i.test(s.sql),
        );
      assert.ok(statements.length >= 5);
      for (const statement of statements) {
        const plan = await explain(database, statement);
        assert.doesNotMatch(plan, fullScan(dialect), `${statement.sql}\n${plan}`);
      }
    });

    if (dialect === "mysql") {
      it("locks the customers past identity_begin's two with statements of their own, in order", async () => {
        const service = new IdentifyService(new SqlContactStore(database), new NoCache());
        const ids: number[] = [];
        for (let i = 0; i < 3; i++) {
          const { email, phone } = fresh();
          const answer = await service.identify({ email, phoneNumber: phone });
          ids.push(answer.customer.primaryContactId);
        }
        const { email, phone } = fresh();
        const store = new SqlContactStore(database);
        const sent = await record(() =>
          store.withLockedTransaction([`email:${email}`], async (tx) => {
            await tx.lockAndFind(ids, { email, phoneNumber: phone });
          }),
        );
        assert.deepEqual(
          sent.map((s) => s.sql.replace(/^(\w+)[\s\S]*?(for update)?$/i, "$1 $2").trim()),
          ["call", "select for update", "select", "call"],
        );
        const [begin, third, , commit] = sent;
        assert.ok(begin !== undefined && third !== undefined && commit !== undefined);
        assert.equal(begin.sql, "call identity_begin(?, ?, ?, ?, ?)");
        assert.deepEqual(begin.parameters.slice(3), [ids[0], ids[1]]);
        assert.deepEqual(third.parameters, [ids[2], ids[2]]);
        assert.equal(commit.sql, "call identity_commit()");
      });

      it("locks customers inside identity_begin (migration 0005) through an index, as a range of ids", async () => {
        // The CALL is not a statement EXPLAIN takes: its body's locking reads are checked here.
        const { rows } = await sql<{ body: string }>`
          select routine_definition as body from information_schema.routines
          where routine_schema = database() and routine_name = 'identity_begin'`.execute(
          database.db,
        );
        const body = rows[0]?.body ?? "";
        const reads = [...body.matchAll(/\bselect\b[^;]*\bfrom\b[^;]*/gi)].map(([text]) => text);
        const locks = reads.filter((text) => /\bContact\b/.test(text));
        assert.deepEqual(
          locks.map((text) => text.replace(/\s+/g, " ")),
          ["first", "second"].map(
            (which) =>
              `select id into found from Contact where linkedId is null and id >= ${which}_customer and id <= ${which}_customer for update`,
          ),
        );
        const [{ id }] = (
          await sql<{ id: number }>`select min(id) as id from Contact`.execute(database.db)
        ).rows as [{ id: number }];
        for (const text of locks) {
          const statement = {
            sql: text.replace(/ into found/, "").replace(/\b\w+_customer\b/g, "?"),
            parameters: [id, id],
            pipelined: false,
          };
          const plan = await explain(database, statement);
          assert.doesNotMatch(plan, fullScan(dialect), `${statement.sql}\n${plan}`);
          // Not a `const` lookup, whose lock MariaDB keeps on a row the condition rejects.
          assert.match(plan, /"type":"range"/, plan);
        }
      });
    }
  });
}

if (dialectsUnderTest().includes("postgres")) {
  describe("PostgreSQL plans on a table that was never analyzed", () => {
    let test: TestDatabase;
    let database: Database;
    const statements: Statement[] = [];

    before(async () => {
      test = await createTestDatabase("postgres");
      database = openDatabase(test.target, {
        poolSize: 1,
        lockTimeoutMs: 5000,
        onStatement: (sql, parameters, pipelined) => {
          statements.push({ sql, parameters, pipelined });
        },
      });
      await migrateToLatest(database);
    });

    after(async () => {
      await database.destroy();
      await test.drop();
    });

    // A new deployment starts with an empty table. Each connection plans a prepared statement
    // once for any values (a generic plan) and keeps that plan until the table is analyzed: a
    // plan made for an empty table scans it, and went on scanning 25,000 rows per read in the
    // benchmark's seeding (autovacuum is off on this machine). The service's connections plan
    // with sequential scans disabled, so the generic plan uses the indexes from the start.
    it("uses the indexes in the generic plan of every statement, made while the table is empty", async () => {
      const service = new IdentifyService(new SqlContactStore(database), new NoCache());
      await service.identify({ email: "first@example.com", phoneNumber: "+15550000001" });
      await service.identify({ email: "second@example.com", phoneNumber: "+15550000001" });
      await service.identify({ email: "third@example.com", phoneNumber: "+15550000003" });
      await service.identify({ email: "first@example.com", phoneNumber: "+15550000003" });
      const reads = statements.filter(
        (s) => /contact/i.test(s.sql) && /^\s*(select|update|with)\b/i.test(s.sql),
      );
      const texts = [...new Map(reads.map((s) => [s.sql, s])).values()];
      // The customers read, the customer lock and the relink of a merge.
      assert.ok(texts.length >= 3, `statements seen: ${texts.length}`);
      await database.db.connection().execute(async (conn) => {
        const run = (text: string) => conn.executeQuery(CompiledQuery.raw(text));
        // EXECUTE takes no bound parameters: the test's own values, as literals.
        const literal = (value: unknown): string => {
          if (value === null) {
            return "null";
          }
          if (typeof value === "number") {
            return String(value);
          }
          if (value instanceof Date) {
            return `'${value.toISOString()}'`;
          }
          if (typeof value === "string") {
            return `'${value.replace(/'/g, "''")}'`;
          }
          return assert.fail(`unexpected parameter ${typeof value}`);
        };
        await run("set plan_cache_mode = force_generic_plan");
        try {
          for (const [i, statement] of texts.entries()) {
            const values = statement.parameters.map(literal).join(", ");
            await run(`prepare generic_${i} as ${statement.sql}`);
            const plan = JSON.stringify(
              (await run(`explain (format json) execute generic_${i}(${values})`)).rows,
            ).replace(/\\"/g, '"');
            await run(`deallocate generic_${i}`);
            assert.doesNotMatch(plan, /"Node Type":"Seq Scan"/, `${statement.sql}\n${plan}`);
          }
        } finally {
          await run("reset plan_cache_mode");
        }
      });
    });
  });
}
