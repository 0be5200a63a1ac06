import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";

type Dialect = "sqlite" | "mysql" | "postgres";

/**
 * The Contact table and its lookup indexes. Frozen: later changes are new migrations.
 * email and phoneNumber compare byte-exactly everywhere (utf8mb4_bin on MySQL/MariaDB; SQLite's
 * BINARY and PostgreSQL's deterministic collations already do).
 */
export function createContact(dialect: Dialect): Migration {
  const identifierType = (length: number) =>
    dialect === "mysql"
      ? sql`varchar(${sql.raw(String(length))}) character set utf8mb4 collate utf8mb4_bin`
      : sql`varchar(${sql.raw(String(length))})`;
  const timestampType =
    dialect === "sqlite" ? sql`text` : dialect === "mysql" ? sql`datetime(3)` : sql`timestamptz(3)`;

  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable("Contact")
        .addColumn("id", dialect === "postgres" ? "serial" : "integer", (col) =>
          dialect === "postgres" ? col.primaryKey() : col.primaryKey().autoIncrement(),
        )
        .addColumn("phoneNumber", identifierType(16))
        .addColumn("email", identifierType(254))
        .addColumn("linkedId", "integer", (col) =>
          dialect === "sqlite" ? col.references("Contact.id") : col,
        )
        .addColumn("linkPrecedence", "varchar(9)", (col) => col.notNull())
        .addColumn("createdAt", timestampType, (col) => col.notNull())
        .addColumn("updatedAt", timestampType, (col) => col.notNull())
        .addColumn("deletedAt", timestampType)
        .addCheckConstraint(
          "Contact_link_check",
          sql`(${sql.ref("linkPrecedence")} = 'primary' and ${sql.ref("linkedId")} is null) or (${sql.ref("linkPrecedence")} = 'secondary' and ${sql.ref("linkedId")} is not null)`,
        )
        .modifyEnd(dialect === "mysql" ? sql`engine = InnoDB` : sql``)
        .execute();
      await db.schema.createIndex("Contact_email_idx").on("Contact").column("email").execute();
      await db.schema
        .createIndex("Contact_phoneNumber_idx")
        .on("Contact")
        .column("phoneNumber")
        .execute();
      await db.schema
        .createIndex("Contact_linkedId_idx")
        .on("Contact")
        .column("linkedId")
        .execute();
      if (dialect !== "sqlite") {
        // Added after the index so that MySQL uses it instead of creating one of its own.
        await db.schema
          .alterTable("Contact")
          .addForeignKeyConstraint("Contact_linkedId_fk", ["linkedId"], "Contact", ["id"])
          .execute();
      }
    },

    async down(db: Kysely<unknown>): Promise<void> {
      await db.schema.dropTable("Contact").execute();
    },
  };
}
