import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { sql } from "kysely";
import { NoCache } from "../../src/cache/customer-cache.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase } from "../../src/storage/database.js";
import type { Database } from "../../src/storage/database.js";
import { migrateToLatest } from "../../src/storage/migrate.js";
import { createContact } from "../../src/storage/migrations/0001-create-contact.js";
import { createContactMerge } from "../../src/storage/migrations/0002-create-contact-merge.js";
import { createMysqlProcedures } from "../../src/storage/migrations/0004-create-mysql-procedures.js";
import { createPostgresIdentifyExpected } from "../../src/storage/migrations/0008-postgres-identify-expected.js";
import { identifyFunction } from "../../src/storage/migrations/postgres-parts.js";
import { createTestDatabase, databaseForSuite, dialectsUnderTest } from "../support/databases.js";
import { runMigrate } from "../support/server.js";
import type { TestDatabase } from "../support/databases.js";

for (const dialect of dialectsUnderTest()) {
  describe(`migrations on ${dialect}`, () => {
    let test: TestDatabase;
    const opened: Database[] = [];

    const open = () => {
      const database = openDatabase(test.target, { poolSize: 3, lockTimeoutMs: 5000 });
      opened.push(database);
      return database;
    };

    before(async () => {
      test = await createTestDatabase(dialect);
    });

    after(async () => {
      await Promise.all(opened.map((database) => database.destroy()));
      await test.drop();
    });

    it("applies every migration once when several processes migrate at the same moment", async () => {
      const runs = await Promise.all([1, 2, 3].map(() => runMigrate(test.url)));
      assert.deepEqual(
        runs.map((run) => run.code),
        [0, 0, 0],
        runs.map((run) => run.stderr).join("\n"),
      );
      const outputs = runs.map((run) => run.stdout.trim().replace(/^.*: /, "")).sort();
      assert.deepEqual(outputs, [
        "applied 0001-create-contact, 0002-create-contact-merge, 0003-create-customer-answer, 0004-create-mysql-procedures, 0005-lock-only-primaries, 0006-create-postgres-identify, 0007-create-mysql-identify, 0008-postgres-identify-expected, 0009-create-cache-debt",
        "schema is up to date",
        "schema is up to date",
      ]);
      assert.deepEqual(await migrateToLatest(open()), [], "a later start applies nothing");
    });

    it("creates the Contact table with the documented columns", async () => {
      const database = open();
      const tables = await database.db.introspection.getTables();
      const contact = tables.find((table) => table.name === "Contact");
      assert.ok(contact);
      // id is left out: SQLite reports an INTEGER PRIMARY KEY as nullable, yet assigns it always.
      const columns = contact.columns.filter((column) => column.name !== "id");
      assert.deepEqual(columns.map((column) => [column.name, column.isNullable]).sort(), [
        ["createdAt", false],
        ["deletedAt", true],
        ["email", true],
        ["linkPrecedence", false],
        ["linkedId", true],
        ["phoneNumber", true],
        ["updatedAt", false],
      ]);
      assert.equal(
        contact.columns.find((column) => column.name === "id")?.isAutoIncrementing,
        true,
      );
    });

    it("compares email and phone byte-exactly, not by case or accent", async () => {
      const database = open();
      const now = dialect === "sqlite" ? new Date().toISOString() : new Date();
      await database.db
        .insertInto("Contact")
        .values([
          {
            email: "Case@Example.com",
            phoneNumber: null,
            linkedId: null,
            linkPrecedence: "primary",
            createdAt: now,
            updatedAt: now,
          },
          {
            email: "resume@example.com",
            phoneNumber: null,
            linkedId: null,
            linkPrecedence: "primary",
            createdAt: now,
            updatedAt: now,
          },
          {
            email: null,
            phoneNumber: "0123456",
            linkedId: null,
            linkPrecedence: "primary",
            createdAt: now,
            updatedAt: now,
          },
        ])
        .execute();
      const store = new SqlContactStore(database);
      assert.deepEqual(
        await store.findCustomers({ email: "case@example.com", phoneNumber: null }),
        [],
      );
      assert.deepEqual(
        await store.findCustomers({ email: "résumé@example.com", phoneNumber: null }),
        [],
      );
      assert.deepEqual(
        await store.findCustomers({ email: "resume@example.com ", phoneNumber: null }),
        [],
      );
      assert.deepEqual(await store.findCustomers({ email: null, phoneNumber: "123456" }), []);
      const exact = await store.findCustomers({ email: "Case@Example.com", phoneNumber: null });
      assert.deepEqual(
        exact.map((row) => row.email),
        ["Case@Example.com"],
      );
    });

    it("rejects a row whose precedence contradicts its link", async () => {
      const database = open();
      const now = dialect === "sqlite" ? new Date().toISOString() : new Date();
      await assert.rejects(
        database.db
          .insertInto("Contact")
          .values({
            email: "x@example.com",
            phoneNumber: null,
            linkedId: null,
            linkPrecedence: "secondary",
            createdAt: now,
            updatedAt: now,
          })
          .execute(),
      );
    });

    it("runs on a schema a newer build migrated, when it has every migration of this build", async () => {
      const database = open();
      const record = (name: string) =>
        sql`insert into kysely_migration (name, timestamp) values (${name}, ${new Date().toISOString()})`.execute(
          database.db,
        );
      const forget = (name: string) =>
        sql`delete from kysely_migration where name = ${name}`.execute(database.db);
      await record("9999-from-a-newer-build");
      try {
        const told: string[][] = [];
        assert.deepEqual(await migrateToLatest(database, (names) => told.push(names)), []);
        assert.deepEqual(told, [["9999-from-a-newer-build"]]);
        const cli = await runMigrate(test.url);
        assert.equal(cli.code, 0, cli.stderr);
        assert.match(
          cli.stdout,
          /schema is newer than this build \(9999-from-a-newer-build\): nothing to apply/,
        );
        // Newer, yet without one of this build's migrations: not a schema this build can use.
        await forget("0009-create-cache-debt");
        try {
          await assert.rejects(
            migrateToLatest(database),
            /migrated by a newer build \(9999-from-a-newer-build\) and lacks 0009-create-cache-debt/,
          );
        } finally {
          await record("0009-create-cache-debt");
        }
      } finally {
        await forget("9999-from-a-newer-build");
      }
      assert.deepEqual(await migrateToLatest(database), []);
    });

    if (dialect === "postgres") {
      it("keeps migration 0006's identity_identify beside 0008's, for instances not yet upgraded", async () => {
        const database = open();
        // The parameter counts of the functions named identity_identify.
        const overloads = async () =>
          (
            await sql<{ args: number }>`
              select pronargs as args from pg_proc
              where proname = 'identity_identify' order by pronargs`.execute(database.db)
          ).rows.map((row) => row.args);
        assert.deepEqual(await overloads(), [5, 7]);
        // An instance of the build before 0008 sends the five-parameter call.
        const created = await sql<{ id: number; outcome: string }>`
          select id, outcome from identity_identify('older@example.com', null, 1, 2, now())`.execute(
          database.db,
        );
        assert.deepEqual(
          created.rows.map((row) => row.outcome),
          ["created"],
        );
        // Undone, 0008 drops only its own function.
        const migration = createPostgresIdentifyExpected("postgres");
        await migration.down?.(database.db);
        assert.deepEqual(await overloads(), [5]);
        await migration.up(database.db);
      });
    }
  });
}

describe("migration helpers", () => {
  it("still create PostgreSQL's identity_identify of migrations 0006 and 0008 to the letter", () => {
    // Both migrations take their function's text from postgres-parts.ts: the digests of the texts
    // they created when they were released.
    const digest = (text: string) => createHash("sha256").update(text).digest("hex");
    assert.equal(
      digest(identifyFunction(false)),
      "e52641deb2188df4a00f8f96ded6cc45b133a97e4e48691a1bd4122610625c83",
    );
    assert.equal(
      digest(identifyFunction(true)),
      "1c7507ee2638e9a2cbbfc515f60f70d97c5f63ce677b601565c68c44413bda77",
    );
  });
});

if (dialectsUnderTest().includes("mysql")) {
  describe("the MySQL/MariaDB migration after an interrupted run (each DDL statement commits alone)", () => {
    // Unmigrated: each test makes the state an interrupted run leaves.
    const suite = databaseForSuite("mysql", (test) =>
      openDatabase(test.target, { poolSize: 2, lockTimeoutMs: 5000 }),
    );

    /** Runs `work` on a connection to another new, unmigrated database, dropped afterwards. */
    async function withOtherDatabase(work: (other: Database) => Promise<void>): Promise<void> {
      const other = await createTestDatabase("mysql");
      const database = openDatabase(other.target, { poolSize: 1, lockTimeoutMs: 5000 });
      try {
        await work(database);
      } finally {
        await database.destroy();
        await other.drop();
      }
    }

    async function schemaObjects(on = suite.database, table = "Contact"): Promise<string[]> {
      const indexes = await sql<{ name: string }>`
        select index_name as name from information_schema.statistics
        where table_schema = database() and table_name = ${table}`.execute(on.db);
      const constraints = await sql<{ name: string }>`
        select constraint_name as name from information_schema.table_constraints
        where constraint_schema = database() and table_name = ${table}`.execute(on.db);
      return [...new Set([...indexes.rows, ...constraints.rows].map((row) => row.name))].sort();
    }

    it("finishes what the interrupted run left undone, once", async () => {
      // The state a crash after CREATE TABLE and the first index leaves: no migration recorded.
      await createContact("mysql").up(suite.database.db);
      const complete = await schemaObjects();
      await sql`alter table Contact drop foreign key Contact_linkedId_fk`.execute(
        suite.database.db,
      );
      await sql`drop index Contact_linkedId_idx on Contact`.execute(suite.database.db);
      await sql`drop index Contact_phoneNumber_idx on Contact`.execute(suite.database.db);
      assert.deepEqual(await schemaObjects(), [
        "Contact_email_idx",
        "Contact_link_check",
        "PRIMARY",
      ]);

      assert.deepEqual(await migrateToLatest(suite.database), [
        "0001-create-contact",
        "0002-create-contact-merge",
        "0003-create-customer-answer",
        "0004-create-mysql-procedures",
        "0005-lock-only-primaries",
        "0006-create-postgres-identify",
        "0007-create-mysql-identify",
        "0008-postgres-identify-expected",
        "0009-create-cache-debt",
      ]);
      assert.deepEqual(await schemaObjects(), complete);
      assert.deepEqual(complete, [
        "Contact_email_idx",
        "Contact_link_check",
        "Contact_linkedId_fk",
        "Contact_linkedId_idx",
        "Contact_phoneNumber_idx",
        "PRIMARY",
      ]);
      assert.deepEqual(await migrateToLatest(suite.database), []);
    });

    it("finishes an interrupted merge log migration too", async () => {
      await withOtherDatabase(async (resumed) => {
        await createContact("mysql").up(resumed.db);
        await createContactMerge("mysql").up(resumed.db);
        await sql`drop index ContactMerge_mergedId_idx on ContactMerge`.execute(resumed.db);
        assert.deepEqual(await migrateToLatest(resumed), [
          "0001-create-contact",
          "0002-create-contact-merge",
          "0003-create-customer-answer",
          "0004-create-mysql-procedures",
          "0005-lock-only-primaries",
          "0006-create-postgres-identify",
          "0007-create-mysql-identify",
          "0008-postgres-identify-expected",
          "0009-create-cache-debt",
        ]);
        assert.deepEqual(await schemaObjects(resumed, "ContactMerge"), [
          "ContactMerge_check",
          "ContactMerge_mergedId_idx",
          "ContactMerge_winnerId_idx",
          "PRIMARY",
        ]);
      });
    });

    it("finishes an interrupted procedures migration (0004) too", async () => {
      await withOtherDatabase(async (resumed) => {
        await createContact("mysql").up(resumed.db);
        await createContactMerge("mysql").up(resumed.db);
        // A run stopped after its first CREATE PROCEDURE: each DDL statement commits on its own.
        await createMysqlProcedures("mysql").up(resumed.db);
        await sql`drop procedure identity_commit`.execute(resumed.db);
        assert.deepEqual(await migrateToLatest(resumed), [
          "0001-create-contact",
          "0002-create-contact-merge",
          "0003-create-customer-answer",
          "0004-create-mysql-procedures",
          "0005-lock-only-primaries",
          "0006-create-postgres-identify",
          "0007-create-mysql-identify",
          "0008-postgres-identify-expected",
          "0009-create-cache-debt",
        ]);
        const procedures = await sql<{ name: string }>`
          select routine_name as name from information_schema.routines
          where routine_schema = database() order by routine_name`.execute(resumed.db);
        assert.deepEqual(
          procedures.rows.map((row) => row.name),
          ["identity_begin", "identity_commit", "identity_identify"],
        );
        // And a write transaction runs through them.
        const store = new SqlContactStore(resumed);
        const answer = await new IdentifyService(store, new NoCache()).identify({
          email: "resumed@example.com",
          phoneNumber: "+15550001234",
        });
        assert.deepEqual(answer.customer.emails, ["resumed@example.com"]);
      });
    });

    it("refuses to adopt a Contact table it did not create", async () => {
      await withOtherDatabase(async (foreign) => {
        await sql`create table Contact (id integer primary key, email varchar(10))`.execute(
          foreign.db,
        );
        await assert.rejects(migrateToLatest(foreign), /did not create/);
      });
    });
  });
}
