import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { CompiledQuery } from "kysely";
import type { Insertable, Transaction } from "kysely";
import { createConnection } from "mysql2/promise";
import pg from "pg";
import { openDatabase } from "../../src/storage/database.js";
import type { Database, DatabaseTarget, DialectName } from "../../src/storage/database.js";
import type { ContactTable, DB } from "../../src/storage/schema.js";
import { migrateToLatest } from "../../src/storage/migrate.js";

/** A fresh, empty database owned by one test file; `drop` removes it. */
export interface TestDatabase {
  readonly dialect: DialectName;
  /** The DATABASE_URL of the fresh database. */
  readonly url: string;
  readonly target: DatabaseTarget;
  drop(): Promise<void>;
}

/** The dialects under test: SQLite always; MariaDB/PostgreSQL when their URLs are set. */
export function dialectsUnderTest(): DialectName[] {
  const dialects: DialectName[] = ["sqlite"];
  if (process.env.TEST_MYSQL_URL) {
    dialects.push("mysql");
  }
  if (process.env.TEST_POSTGRES_URL) {
    dialects.push("postgres");
  }
  return dialects;
}

/** Server dialects only (the ones several processes share over the network). */
export function serverDialectsUnderTest(): DialectName[] {
  return dialectsUnderTest().filter((d) => d !== "sqlite");
}

function uniqueName(): string {
  return `idr_test_${Date.now().toString(36)}_${randomBytes(4).toString("hex")}`;
}

function withDatabase(url: string, name: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${name}`;
  return parsed.toString();
}

/**
 * Creates a new empty database of `dialect`, through the server at `adminUrl` (by default
 * TEST_MYSQL_URL or TEST_POSTGRES_URL).
 */
export async function createTestDatabase(
  dialect: DialectName,
  adminUrl?: string,
): Promise<TestDatabase> {
  const name = uniqueName();
  switch (dialect) {
    case "sqlite": {
      const dir = mkdtempSync(join(tmpdir(), "idr-"));
      const path = join(dir, "contacts.db");
      return {
        dialect,
        url: `sqlite:${path}`,
        target: { dialect, path },
        drop: () => {
          rmSync(dir, { recursive: true, force: true });
          return Promise.resolve();
        },
      };
    }
    case "mysql": {
      const admin = adminUrl ?? process.env.TEST_MYSQL_URL ?? "";
      const connection = await createConnection(admin);
      await connection.query(`create database \`${name}\``);
      await connection.end();
      const url = withDatabase(admin, name);
      return {
        dialect,
        url,
        target: { dialect, url },
        drop: async () => {
          const c = await createConnection(admin);
          await c.query(`drop database if exists \`${name}\``);
          await c.end();
        },
      };
    }
    case "postgres": {
      const admin = adminUrl ?? process.env.TEST_POSTGRES_URL ?? "";
      const client = new pg.Client({ connectionString: admin });
      await client.connect();
      await client.query(`create database "${name}"`);
      await client.end();
      const url = withDatabase(admin, name);
      return {
        dialect,
        url,
        target: { dialect, url },
        drop: async () => {
          const c = new pg.Client({ connectionString: admin });
          await c.connect();
          await c.query(`drop database if exists "${name}" with (force)`);
          await c.end();
        },
      };
    }
  }
}

/**
 * Call inside a describe: its tests get a fresh test database of `dialect` (created before them,
 * dropped after them) as `suite.test`, and the connection `open` makes to it as `suite.database`.
 */
export function databaseForSuite(
  dialect: DialectName,
  open: (test: TestDatabase) => Database | Promise<Database>,
): {
  readonly test: TestDatabase;
  readonly database: Database;
} {
  let test: TestDatabase | undefined;
  let database: Database | undefined;
  before(async () => {
    test = await createTestDatabase(dialect);
    database = await open(test);
  });
  after(async () => {
    await database?.destroy();
    await test?.drop();
  });
  return {
    get test() {
      if (test === undefined) {
        throw new Error("the suite's database is created in before()");
      }
      return test;
    },
    get database() {
      if (database === undefined) {
        throw new Error("the suite's database is created in before()");
      }
      return database;
    },
  };
}

/** databaseForSuite with a migrated connection (openMigrated). */
export function migratedDatabaseForSuite(dialect: DialectName): {
  readonly test: TestDatabase;
  readonly database: Database;
} {
  return databaseForSuite(dialect, (test) => openMigrated(test));
}

/** Opens a migrated connection to a test database. */
export async function openMigrated(test: TestDatabase, poolSize = 5): Promise<Database> {
  const database = openDatabase(test.target, { poolSize, lockTimeoutMs: 5000 });
  await migrateToLatest(database);
  return database;
}

/** One row of the Contact table, read back for assertions. */
export interface StoredContact {
  id: number;
  email: string | null;
  phoneNumber: string | null;
  linkedId: number | null;
  linkPrecedence: string;
  createdAt: number;
  updatedAt: number;
  deletedAt: number | null;
}

function millis(value: Date | string | null): number | null {
  if (value === null) {
    return null;
  }
  return value instanceof Date ? value.getTime() : Date.parse(value);
}

/**
 * Inserts one Contact row past the service (a state to test against): a primary without
 * `linkedId`, else a secondary, created (and updated) at `createdAt`, by default now. Its id.
 */
export async function insertContact(
  database: Database,
  contact: {
    email: string | null;
    phoneNumber: string | null;
    linkedId: number | null;
    createdAt?: Date | string;
  },
): Promise<number> {
  const at = contact.createdAt ?? new Date();
  const time = database.dialect === "sqlite" && at instanceof Date ? at.toISOString() : at;
  const values: Insertable<ContactTable> = {
    email: contact.email,
    phoneNumber: contact.phoneNumber,
    linkedId: contact.linkedId,
    linkPrecedence: contact.linkedId === null ? "primary" : "secondary",
    createdAt: time,
    updatedAt: time,
  };
  if (database.dialect === "mysql") {
    const result = await database.db.insertInto("Contact").values(values).executeTakeFirst();
    return Number(result.insertId);
  }
  const row = await database.db
    .insertInto("Contact")
    .values(values)
    .returning("id")
    .executeTakeFirstOrThrow();
  return row.id;
}

/** Every row of the Contact table, ordered by id. */
export async function allContacts(database: Database): Promise<StoredContact[]> {
  const rows = await database.db.selectFrom("Contact").selectAll().orderBy("id").execute();
  return rows.map((row) => ({
    id: row.id,
    email: row.email,
    phoneNumber: row.phoneNumber,
    linkedId: row.linkedId,
    linkPrecedence: row.linkPrecedence,
    createdAt: millis(row.createdAt) ?? 0,
    updatedAt: millis(row.updatedAt) ?? 0,
    deletedAt: millis(row.deletedAt),
  }));
}

/**
 * SQLite's kept answers (migration 0003), by primary id; empty elsewhere, where none are kept.
 */
export async function keptAnswers(database: Database): Promise<Map<number, string>> {
  if (database.dialect !== "sqlite") {
    return new Map();
  }
  const rows = await database.db.selectFrom("CustomerAnswer").selectAll().execute();
  return new Map(rows.map((row) => [row.primaryId, row.answer]));
}

/**
 * Runs `statement` in a transaction of `database` and keeps the transaction open, with its
 * connection and any lock it took, until the returned function is called (which resolves once
 * the transaction has ended). Resolves once `statement` has run; rejects if it fails.
 */
export async function holdTransaction(
  database: Database,
  statement: (trx: Transaction<DB>) => Promise<unknown>,
): Promise<() => Promise<void>> {
  const gates = { release: (): void => undefined, inside: (): void => undefined };
  const released = new Promise<void>((resolve) => {
    gates.release = resolve;
  });
  const inside = new Promise<void>((resolve) => {
    gates.inside = resolve;
  });
  const done = database.db.transaction().execute(async (trx) => {
    await statement(trx);
    gates.inside();
    await released;
  });
  await Promise.race([inside, done]);
  return async () => {
    gates.release();
    await done;
  };
}

/**
 * What a full scan of one of `tables` looks like in `explain`'s text for `dialect` (on
 * MySQL/MariaDB, a scan of any table but a derived one).
 */
export function fullScan(
  dialect: DialectName,
  tables: readonly string[] = ["Contact", "CustomerAnswer"],
): RegExp {
  const names = tables.join("|");
  switch (dialect) {
    case "sqlite":
      return new RegExp(`SCAN (${names})(?! USING)`);
    case "postgres":
      return new RegExp(`"Node Type": "Seq Scan",[^}]*"Relation Name": "(${names})"`);
    case "mysql":
      // Any table but a derived one, by name or by alias (the customers read aliases Contact).
      return /"table":"(?!<derived)[^"]*"[^}]*"type":"ALL"|"type":"ALL"[^}]*"table":"(?!<derived)/;
  }
}

/** The plan of `statement` as the database explains it, as text (JSON, quotes unescaped). */
export async function explain(
  database: Database,
  statement: { readonly sql: string; readonly parameters: readonly unknown[] },
): Promise<string> {
  const run = async (text: string, parameters: readonly unknown[]) =>
    (await database.db.executeQuery(CompiledQuery.raw(text, [...parameters]))).rows;
  switch (database.dialect) {
    case "sqlite":
      return JSON.stringify(
        await run(`explain query plan ${statement.sql}`, statement.parameters),
      ).replace(/\\"/g, '"');
    case "postgres":
      // The service's connections plan with enable_seqscan off (storage/database.ts), so a scan
      // in the plan means that no index can serve the statement.
      return JSON.stringify(
        await run(`explain (format json) ${statement.sql}`, statement.parameters),
        null,
        1,
      )
        .replace(/\s+/g, " ")
        .replace(/\\"/g, '"');
    case "mysql":
      return JSON.stringify(await run(`explain ${statement.sql}`, statement.parameters));
  }
}
