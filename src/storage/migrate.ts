import { Migrator } from "kysely";
import type { Migration, MigrationResultSet } from "kysely";
import type { Database } from "./database.js";
import { DatabaseError } from "./errors.js";
import { createContact } from "./migrations/0001-create-contact.js";

/** Every migration, in order. Names are frozen once released. */
function migrations(dialect: Database["dialect"]): Record<string, Migration> {
  return {
    "0001-create-contact": createContact(dialect),
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
  const attempts = database.dialect === "sqlite" ? 20 : 1;
  let result: MigrationResultSet | undefined;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    result = await migrator.migrateToLatest();
    // Two processes opening one new SQLite file can collide before either holds the write lock.
    if (!isSqliteBusy(result.error) || attempt === attempts) {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
  }
  if (result?.error !== undefined) {
    const failed = result.results?.find((r) => r.status === "Error")?.migrationName;
    throw new DatabaseError(
      `migration ${failed ?? "setup"} failed: ${errorMessage(result.error)}`,
      { cause: result.error },
    );
  }
  return (result?.results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
}

function isSqliteBusy(error: unknown): boolean {
  return (
    typeof error === "object" &&
    error !== null &&
    "code" in error &&
    typeof error.code === "string" &&
    error.code.startsWith("SQLITE_BUSY")
  );
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
