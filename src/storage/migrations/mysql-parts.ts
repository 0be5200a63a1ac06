import { sql } from "kysely";
import type { Kysely } from "kysely";

// Released migrations use these helpers: never change what they create or decide; a migration
// that needs something else gets a helper of its own.

/**
 * A binary collation without PAD SPACE: utf8mb4_bin ignores trailing spaces in comparisons.
 * MariaDB calls it utf8mb4_nopad_bin, MySQL 8 utf8mb4_0900_bin.
 */
export async function binaryNoPadCollation(db: Kysely<unknown>): Promise<string> {
  const result = await sql<{ name: string }>`
    select collation_name as name from information_schema.collations
    where collation_name in ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')
    order by collation_name desc`.execute(db);
  const name = result.rows[0]?.name;
  if (name === undefined) {
    throw new Error(
      "the server has no binary NO PAD collation for utf8mb4 (MariaDB 10.3.10+ or MySQL 8.0.17+ needed)",
    );
  }
  return name;
}

/** What an earlier run of a migration left of a table: whether it exists, and its indexes. */
export interface ExistingParts {
  readonly table: boolean;
  /** Names of the table's indexes and constraints. */
  readonly objects: ReadonlySet<string>;
}

export const NOTHING_YET: ExistingParts = { table: false, objects: new Set() };

/**
 * MySQL/MariaDB commit each DDL statement on its own: a migration stopped half-way (a crash, a
 * lost connection) leaves a table, and maybe some of its indexes, without the migration
 * recorded, and the next run must do only what is missing. This reads what is there. The table
 * is recognized as the migration's own by `marker`, a check constraint made in the same CREATE
 * TABLE; a table of that name without it was not made by this service and is refused. (CHECK
 * constraints are listed in information_schema from MariaDB 10.3.10 and MySQL 8.0.16.)
 */
export async function existingParts(
  db: Kysely<unknown>,
  table: string,
  marker: string,
): Promise<ExistingParts> {
  const tables = await sql<{ name: string }>`
    select table_name as name from information_schema.tables
    where table_schema = database() and table_name = ${table}`.execute(db);
  if (tables.rows.length === 0) {
    return NOTHING_YET;
  }
  const indexes = await sql<{ name: string }>`
    select index_name as name from information_schema.statistics
    where table_schema = database() and table_name = ${table}`.execute(db);
  const constraints = await sql<{ name: string }>`
    select constraint_name as name from information_schema.table_constraints
    where constraint_schema = database() and table_name = ${table}`.execute(db);
  const names = new Set([...indexes.rows, ...constraints.rows].map((row) => row.name));
  if (!names.has(marker)) {
    throw new Error(
      `a ${table} table exists that this service did not create (it lacks ${marker}); ` +
        "use another database, or drop or rename that table",
    );
  }
  return { table: true, objects: names };
}

/** Creates each single-column index of `table` that `done` does not already hold. */
export async function createMissingIndexes(
  db: Kysely<unknown>,
  table: string,
  indexes: readonly (readonly [name: string, column: string])[],
  done: ExistingParts,
): Promise<void> {
  for (const [name, column] of indexes) {
    if (!done.objects.has(name)) {
      await db.schema.createIndex(name).on(table).column(column).execute();
    }
  }
}
