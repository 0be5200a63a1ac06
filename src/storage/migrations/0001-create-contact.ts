import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";

type Dialect = "sqlite" | "mysql" | "postgres";

/**
 * The Contact table and its lookup indexes. Frozen: later changes are new migrations.
 * email and phoneNumber compare byte-exactly everywhere (utf8mb4_bin on MySQL/MariaDB; SQLite's
 * BINARY and PostgreSQL's deterministic collations already do).
 */
export function createContact(dialect: Dialect): Migration {
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

/**
 * A binary collation without PAD SPACE: utf8mb4_bin ignores trailing spaces in comparisons.
 * MariaDB calls it utf8mb4_nopad_bin, MySQL 8 utf8mb4_0900_bin.
 */
async function binaryNoPadCollation(db: Kysely<unknown>): Promise<string> {
  const result = await sql<{ name: string }>`
    select collation_name as name from information_schema.collations
    where collation_name in ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')
    order by collation_name desc`.execute(db);
  const name = result.rows[0]?.name;
  if (name === undefined) {
    throw new Error(
      "the server has no binary NO PAD collation for utf8mb4 (MariaDB 10.2+ or MySQL 8 needed)",
    );
  }
  return name;
}

async function createTable(
  db: Kysely<unknown>,
  dialect: Dialect,
  collation: string | null,
): Promise<void> {
  const identifierType = (length: number) =>
    collation !== null
      ? sql`varchar(${sql.raw(String(length))}) character set utf8mb4 collate ${sql.raw(collation)}`
      : sql`varchar(${sql.raw(String(length))})`;
  const timestampType =
    dialect === "sqlite" ? sql`text` : dialect === "mysql" ? sql`datetime(3)` : sql`timestamptz(3)`;

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
  await db.schema.createIndex("Contact_linkedId_idx").on("Contact").column("linkedId").execute();
  if (dialect !== "sqlite") {
    // Added after the index so that MySQL uses it instead of creating one of its own.
    await db.schema
      .alterTable("Contact")
      .addForeignKeyConstraint("Contact_linkedId_fk", ["linkedId"], "Contact", ["id"])
      .execute();
  }
}
