import { Migrator } from "kysely";
import type { Migration } from "kysely";
import type { Database } from "./database.js";
import { DatabaseError } from "./errors.js";
import { createContact } from "./migrations/0001-create-contact.js";
import { createContactMerge } from "./migrations/0002-create-contact-merge.js";
import { createCustomerAnswer } from "./migrations/0003-create-customer-answer.js";
import { createMysqlProcedures } from "./migrations/0004-create-mysql-procedures.js";
import { lockOnlyPrimaries } from "./migrations/0005-lock-only-primaries.js";
import { createPostgresIdentify } from "./migrations/0006-create-postgres-identify.js";
import { createMysqlIdentify } from "./migrations/0007-create-mysql-identify.js";
import { createPostgresIdentifyExpected } from "./migrations/0008-postgres-identify-expected.js";

/** Every migration, in order. Names are frozen once released. */
function migrations(dialect: Database["dialect"]): Record<string, Migration> {
  return {
    "0001-create-contact": createContact(dialect),
    "0002-create-contact-merge": createContactMerge(dialect),
    "0003-create-customer-answer": createCustomerAnswer(dialect),
    "0004-create-mysql-procedures": createMysqlProcedures(dialect),
    "0005-lock-only-primaries": lockOnlyPrimaries(dialect),
    "0006-create-postgres-identify": createPostgresIdentify(dialect),
    "0007-create-mysql-identify": createMysqlIdentify(dialect),
    "0008-postgres-identify-expected": createPostgresIdentifyExpected(dialect),
  };
}

/**
 * Brings the schema to the latest version. Idempotent, and safe when several instances start at
 * once: Kysely's migrator holds a database lock while it runs. Returns the names it applied.
 */
export async function migrateToLatest(database: Database): Promise<string[]> {
  const migrator = new Migrator({
    db: database.db,
    provider: { getMigrations: () => Promise.resolve(migrations(database.dialect)) },
  });
  const result = await migrator.migrateToLatest();
  if (result.error !== undefined) {
    const failed = result.results?.find((r) => r.status === "Error")?.migrationName;
    throw new DatabaseError(
      `migration ${failed ?? "setup"} failed: ${errorMessage(result.error)}`,
      { cause: result.error },
    );
  }
  return (result.results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
}

/** Names of the migrations not yet applied; rejects when the database cannot be reached. */
export async function pendingMigrations(database: Database): Promise<string[]> {
  const migrator = new Migrator({
    db: database.db,
    provider: { getMigrations: () => Promise.resolve(migrations(database.dialect)) },
  });
  const all = await migrator.getMigrations();
  return all.filter((migration) => migration.executedAt === undefined).map((m) => m.name);
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
