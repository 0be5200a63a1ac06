import { sql } from "kysely";
import type { RawBuilder } from "kysely";
import type { DialectName } from "../database.js";

/**
 * The column types the migrations share, per dialect. Released migrations use them: never change
 * what they produce; a migration that needs another type says so itself.
 */
export interface ColumnTypes {
  /** An email or phone column: byte-exact comparison (on MySQL/MariaDB, `collation`). */
  identifier(length: number): RawBuilder<unknown>;
  /** ISO-8601 text on SQLite, datetime(3) (UTC) on MySQL/MariaDB, timestamptz(3) on PostgreSQL. */
  readonly timestamp: RawBuilder<unknown>;
}

export function columnTypes(dialect: DialectName, collation: string | null): ColumnTypes {
  return {
    identifier: (length) =>
      collation !== null
        ? sql`varchar(${sql.raw(String(length))}) character set utf8mb4 collate ${sql.raw(collation)}`
        : sql`varchar(${sql.raw(String(length))})`,
    timestamp:
      dialect === "sqlite"
        ? sql`text`
        : dialect === "mysql"
          ? sql`datetime(3)`
          : sql`timestamptz(3)`,
  };
}
