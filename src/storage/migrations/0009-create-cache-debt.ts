import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import { columnTypes } from "./column-types.js";
import type { DialectName } from "../database.js";

/**
 * The cache's debts, kept where every instance sees them: a writer whose publication to Redis
 * failed records here, before it answers, what it owes (a floor at the version it answered with,
 * a tombstone for a primary it merged away), and whichever instance reaches Redis first pays it
 * and deletes the row (README, Cache). One table, no index but its key: it is read in key order
 * and is empty but during a Redis outage. Created with `if not exists`, so a MySQL/MariaDB run
 * interrupted after it (DDL commits at once there) runs again cleanly.
 */
export function createCacheDebt(dialect: DialectName): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      const types = columnTypes(dialect, null);
      await db.schema
        .createTable("CacheDebt")
        .ifNotExists()
        .addColumn("id", dialect === "postgres" ? "serial" : "integer", (col) =>
          dialect === "postgres" ? col.primaryKey() : col.primaryKey().autoIncrement(),
        )
        .addColumn("primaryId", "integer", (col) => col.notNull())
        .addColumn("kind", "varchar(9)", (col) => col.notNull())
        .addColumn("version", "integer", (col) => col.notNull())
        .addColumn("createdAt", types.timestamp, (col) => col.notNull())
        .addCheckConstraint(
          "CacheDebt_check",
          sql`${sql.ref("kind")} in ('floor', 'tombstone') and ${sql.ref("version")} >= 0`,
        )
        .modifyEnd(dialect === "mysql" ? sql`engine = InnoDB` : sql``)
        .execute();
    },

    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("CacheDebt").execute();
    },
  };
}
