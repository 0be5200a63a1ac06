import { sql } from "kysely";
import type { Kysely, Migration, RawBuilder } from "kysely";

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

  // MySQL/MariaDB commit each DDL statement on its own: a run that stopped half-way (a crash, a
  // lost connection) leaves the table, and maybe some indexes, without the migration recorded.
  // The next run then does only the steps that are missing. Elsewhere the migration is one
  // transaction and every step runs.
  const done =
    dialect === "mysql" ? await existingParts(db) : { table: false, objects: new Set<string>() };
  if (!done.table) {
    await createContactTable(db, dialect, identifierType, timestampType);
  }
  for (const [name, column] of [
    ["Contact_email_idx", "email"],
    ["Contact_phoneNumber_idx", "phoneNumber"],
    ["Contact_linkedId_idx", "linkedId"],
  ] as const) {
    if (!done.objects.has(name)) {
      await db.schema.createIndex(name).on("Contact").column(column).execute();
    }
  }
  if (dialect !== "sqlite" && !done.objects.has("Contact_linkedId_fk")) {
    // Added after the index so that MySQL uses it instead of creating one of its own.
    await db.schema
      .alterTable("Contact")
      .addForeignKeyConstraint("Contact_linkedId_fk", ["linkedId"], "Contact", ["id"])
      .execute();
  }
}

/**
 * MySQL/MariaDB: whether an earlier, interrupted run created the table (recognized by its check
 * constraint, made in the same statement), and the indexes and constraints it has. A Contact
 * table without that constraint was not made by this service: the migration refuses to adopt it.
 */
async function existingParts(
  db: Kysely<unknown>,
): Promise<{ table: boolean; objects: Set<string> }> {
  const tables = await sql<{ name: string }>`
    select table_name as name from information_schema.tables
    where table_schema = database() and table_name = ${"Contact"}`.execute(db);
  if (tables.rows.length === 0) {
    return { table: false, objects: new Set() };
  }
  const objects = await sql<{ name: string }>`
    select index_name as name from information_schema.statistics
    where table_schema = database() and table_name = ${"Contact"}
    union
    select constraint_name as name from information_schema.table_constraints
    where constraint_schema = database() and table_name = ${"Contact"}`.execute(db);
  const names = new Set(objects.rows.map((row) => row.name));
  if (!names.has("Contact_link_check")) {
    throw new Error(
      "a Contact table exists that this service did not create (it lacks Contact_link_check); " +
        "use another database, or drop or rename that table",
    );
  }
  return { table: true, objects: names };
}

async function createContactTable(
  db: Kysely<unknown>,
  dialect: Dialect,
  identifierType: (length: number) => RawBuilder<unknown>,
  timestampType: RawBuilder<unknown>,
): Promise<void> {
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
}
