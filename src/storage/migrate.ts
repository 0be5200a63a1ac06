import { DEFAULT_MIGRATION_TABLE, Migrator, sql } from "kysely";
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
import { createCacheDebt } from "./migrations/0009-create-cache-debt.js";

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
    "0009-create-cache-debt": createCacheDebt(dialect),
  };
}

/**
 * Brings the schema to the latest version. Idempotent, and safe when several instances start at
 * once: Kysely's migrator holds a database lock while it runs. Returns the names it applied.
 *
 * A database that a newer build has migrated (a rolling deploy, or a rollback of that build)
 * records migrations this build does not know, and Kysely's migrator refuses it. If every
 * migration of this build is among those applied, there is nothing to do: it applies nothing,
 * tells `onNewer` the names it does not know, and the build runs on the newer schema (each
 * migration so far adds to the schema, or replaces a procedure keeping its parameters and
 * answer). A database that lacks one of this build's migrations as well is an error. The check
 * runs before the migrator takes its lock, so a newer build migrating at that very moment can
 * still fail this start once; the next start finds the newer schema.
 */
export async function migrateToLatest(
  database: Database,
  onNewer?: (names: string[]) => void,
): Promise<string[]> {
  const known = migrations(database.dialect);
  const recorded = await recordedMigrations(database);
  const newer = recorded.filter((name) => !(name in known));
  if (newer.length > 0) {
    const missing = Object.keys(known).filter((name) => !recorded.includes(name));
    if (missing.length > 0) {
      throw new DatabaseError(
        `the schema was migrated by a newer build (${newer.join(", ")}) and lacks ${missing.join(", ")}`,
      );
    }
    onNewer?.(newer);
    return [];
  }
  const migrator = new Migrator({
    db: database.db,
    provider: { getMigrations: () => Promise.resolve(known) },
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

/**
 * The names the migration table records as applied; none where it does not exist yet (a new
 * database: a database that cannot be reached fails in the migrator right after).
 */
async function recordedMigrations(database: Database): Promise<string[]> {
  try {
    const result = await sql<{
      name: string;
    }>`select ${sql.ref("name")} from ${sql.table(DEFAULT_MIGRATION_TABLE)}`.execute(database.db);
    return result.rows.map((row) => row.name);
  } catch {
    return [];
  }
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
