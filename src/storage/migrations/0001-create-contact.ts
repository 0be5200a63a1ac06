import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import { columnTypes } from "./column-types.js";
import type { DialectName } from "../database.js";
import type { ColumnTypes } from "./column-types.js";
import {
  binaryNoPadCollation,
  createMissingIndexes,
  existingParts,
  NOTHING_YET,
} from "./mysql-parts.js";

/**
 * The Contact table and its lookup indexes. Frozen: later changes are new migrations (resuming an
 * interrupted MySQL/MariaDB run, added later, leaves the same schema).
 * email and phoneNumber compare byte-exactly everywhere (utf8mb4_bin on MySQL/MariaDB; SQLite's
 * BINARY and PostgreSQL's deterministic collations already do).
 */
export function createContact(dialect: DialectName): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      const collation = dialect === "mysql" ? await binaryNoPadCollation(db) : null;
      await createTable(db, dialect, collation);
    },

    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("Contact").execute();
    },
  };
}

async function createTable(
  db: Kysely<unknown>,
  dialect: DialectName,
  collation: string | null,
): Promise<void> {
  // MySQL/MariaDB: only what an interrupted run left undone (see existingParts). Elsewhere the
  // migration is one transaction and every step runs.
  const done =
    dialect === "mysql" ? await existingParts(db, "Contact", "Contact_link_check") : NOTHING_YET;
  if (!done.table) {
    await createContactTable(db, dialect, columnTypes(dialect, collation));
  }
  await createMissingIndexes(
    db,
    "Contact",
    [
      ["Contact_email_idx", "email"],
      ["Contact_phoneNumber_idx", "phoneNumber"],
      ["Contact_linkedId_idx", "linkedId"],
    ],
    done,
  );
  if (dialect !== "sqlite" && !done.objects.has("Contact_linkedId_fk")) {
    // Added after the index so that MySQL uses it instead of creating one of its own.
    await db.schema
      .alterTable("Contact")
      .addForeignKeyConstraint("Contact_linkedId_fk", ["linkedId"], "Contact", ["id"])
      .execute();
  }
}

async function createContactTable(
  db: Kysely<unknown>,
  dialect: DialectName,
  types: ColumnTypes,
): Promise<void> {
  await db.schema
    .createTable("Contact")
    .addColumn("id", dialect === "postgres" ? "serial" : "integer", (col) =>
      dialect === "postgres" ? col.primaryKey() : col.primaryKey().autoIncrement(),
    )
    .addColumn("phoneNumber", types.identifier(16))
    .addColumn("email", types.identifier(254))
    .addColumn("linkedId", "integer", (col) =>
      dialect === "sqlite" ? col.references("Contact.id") : col,
    )
    .addColumn("linkPrecedence", "varchar(9)", (col) => col.notNull())
    .addColumn("createdAt", types.timestamp, (col) => col.notNull())
    .addColumn("updatedAt", types.timestamp, (col) => col.notNull())
    .addColumn("deletedAt", types.timestamp)
    .addCheckConstraint(
      "Contact_link_check",
      sql`(${sql.ref("linkPrecedence")} = 'primary' and ${sql.ref("linkedId")} is null) or (${sql.ref("linkPrecedence")} = 'secondary' and ${sql.ref("linkedId")} is not null)`,
    )
    .modifyEnd(dialect === "mysql" ? sql`engine = InnoDB` : sql``)
    .execute();
}
