import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import { columnTypes } from "./column-types.js";
import type { DialectName } from "../database.js";
import {
  binaryNoPadCollation,
  createMissingIndexes,
  existingParts,
  NOTHING_YET,
} from "./mysql-parts.js";

/**
 * The merge log: one row per customer moved under another, written in the transaction of the
 * merge, with its kind (a request bridged the two, or a soft-deleted primary's stand-in was
 * promoted) and the identifiers of the request that did it: what support needs to explain a
 * merge. Ids are not foreign keys: contacts are never deleted, only soft-deleted.
 */
export function createContactMerge(dialect: DialectName): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      const collation = dialect === "mysql" ? await binaryNoPadCollation(db) : null;
      const types = columnTypes(dialect, collation);
      // MySQL/MariaDB: only what an interrupted run left undone (see existingParts).
      const done =
        dialect === "mysql"
          ? await existingParts(db, "ContactMerge", "ContactMerge_check")
          : NOTHING_YET;
      if (!done.table) {
        await db.schema
          .createTable("ContactMerge")
          .addColumn("id", dialect === "postgres" ? "serial" : "integer", (col) =>
            dialect === "postgres" ? col.primaryKey() : col.primaryKey().autoIncrement(),
          )
          .addColumn("winnerId", "integer", (col) => col.notNull())
          .addColumn("mergedId", "integer", (col) => col.notNull())
          .addColumn("kind", "varchar(9)", (col) => col.notNull())
          .addColumn("email", types.identifier(254))
          .addColumn("phoneNumber", types.identifier(16))
          .addColumn("createdAt", types.timestamp, (col) => col.notNull())
          .addCheckConstraint(
            "ContactMerge_check",
            sql`${sql.ref("winnerId")} <> ${sql.ref("mergedId")} and ${sql.ref("kind")} in ('bridge', 'promotion')`,
          )
          .modifyEnd(dialect === "mysql" ? sql`engine = InnoDB` : sql``)
          .execute();
      }
      await createMissingIndexes(
        db,
        "ContactMerge",
        [
          ["ContactMerge_winnerId_idx", "winnerId"],
          ["ContactMerge_mergedId_idx", "mergedId"],
        ],
        done,
      );
    },

    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("ContactMerge").execute();
    },
  };
}
