import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import type { DialectName } from "../database.js";

/**
 * SQLite only: each customer's answer, kept ready as the JSON text the API answers with, under
 * its primary's id. The service writes it in the transaction of every change to the customer, so
 * a repeat order reads one short row instead of the customer's rows (README, Concurrency design).
 *
 * Triggers drop a customer's answer whenever any of its rows is inserted, changed, replaced or
 * deleted, by the service or by anything else (a hand edit, a soft-delete, an older build of the
 * service): an answer that exists was written after the last change to its customer, in the same
 * transaction as that change or a later one. A customer without one is answered from its rows
 * until its next write transaction keeps its answer again. The customers already stored get
 * theirs here (keepMissingAnswers), in the migration's transaction (BEGIN IMMEDIATE: no other
 * process writes meanwhile).
 *
 * The answers are the API's bytes: a later change to the answer's shape or order needs a
 * migration that empties this table (and keeps the answers again in the new shape).
 *
 * MySQL/MariaDB and PostgreSQL get nothing: there a repeat order is answered by the cache, and
 * keeping the answer would cost every write one more round trip.
 */
export function createCustomerAnswer(dialect: DialectName): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "sqlite") {
        return;
      }
      await db.schema
        .createTable("CustomerAnswer")
        .addColumn("primaryId", "integer", (col) => col.primaryKey())
        .addColumn("answer", "text", (col) => col.notNull())
        .execute();
      const group = (row: "new" | "old") => `coalesce(${row}."linkedId", ${row}."id")`;
      const drop = (event: "insert" | "update" | "delete", customers: string) =>
        sql`create trigger ${sql.ref(`CustomerAnswer_contact_${event}`)} after ${sql.raw(event)} on "Contact" begin delete from "CustomerAnswer" where "primaryId" in (${sql.raw(customers)}); end`.execute(
          db,
        );
      await drop("insert", group("new"));
      await drop("update", `${group("old")}, ${group("new")}`);
      await drop("delete", group("old"));
      // INSERT OR REPLACE (and UPDATE OR REPLACE of an id) deletes the row it replaces without the
      // delete trigger (unless recursive_triggers is on): drop the answer of the customer that
      // row belonged to first.
      const replaced = `delete from "CustomerAnswer" where "primaryId" in (select coalesce("linkedId", "id") from "Contact" where "id" = new."id")`;
      await sql`create trigger "CustomerAnswer_contact_replace" before insert on "Contact" begin ${sql.raw(replaced)}; end`.execute(
        db,
      );
      await sql`create trigger "CustomerAnswer_contact_replace_id" before update of "id" on "Contact" begin ${sql.raw(replaced)}; end`.execute(
        db,
      );
      await keepMissingAnswers(db);
    },

    async down(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "sqlite") {
        return;
      }
      for (const trigger of ["insert", "update", "delete", "replace", "replace_id"]) {
        await sql`drop trigger if exists ${sql.ref(`CustomerAnswer_contact_${trigger}`)}`.execute(
          db,
        );
      }
      await db.schema.dropTable("CustomerAnswer").execute();
    },
  };
}

/** Customers whose answers are computed and inserted together. */
const CHUNK = 500;

interface Row {
  readonly id: number;
  readonly email: string | null;
  readonly phoneNumber: string | null;
  readonly linkedId: number | null;
  readonly createdAt: string;
}

/**
 * SQLite: keeps the answer of every customer that has none, computed from its live rows as the
 * service answers (the primary's values first, then by creation, distinct; secondaries by
 * creation), as of this migration; returns how many it kept. Only customers whose primary is
 * live: one whose primary was soft-deleted gets its answer from the transaction that promotes its
 * oldest row. The caller runs it in one transaction (the migration's, or after the benchmark's
 * bulk load), so that no row changes between the read of a customer and its answer.
 */
export async function keepMissingAnswers(db: Kysely<unknown>): Promise<number> {
  let after = 0;
  let kept = 0;
  for (;;) {
    const { rows: primaries } = await sql<{
      id: number;
    }>`select "id" from "Contact" where "linkedId" is null and "deletedAt" is null and "id" > ${after} and not exists (select 1 from "CustomerAnswer" where "primaryId" = "Contact"."id") order by "id" limit ${CHUNK}`.execute(
      db,
    );
    const last = primaries[primaries.length - 1]?.id;
    if (last === undefined) {
      return kept;
    }
    const first = primaries[0]?.id ?? last;
    // The primaries of the range (by the primary key), then their secondaries (by the linkedId
    // index); rows of customers outside the chunk (answer kept already) are left out below.
    const { rows } =
      await sql<Row>`select "id", "email", "phoneNumber", "linkedId", "createdAt" from "Contact" where "deletedAt" is null and "linkedId" is null and "id" between ${first} and ${last} union all select "id", "email", "phoneNumber", "linkedId", "createdAt" from "Contact" where "deletedAt" is null and "linkedId" between ${first} and ${last}`.execute(
        db,
      );
    const members = new Map<number, Row[]>(primaries.map(({ id }) => [id, []]));
    for (const row of rows) {
      members.get(row.linkedId ?? row.id)?.push(row);
    }
    const values = [...members].map(
      ([primaryId, customer]) => sql`(${primaryId}, ${answerOf(primaryId, customer)})`,
    );
    await sql`insert into "CustomerAnswer" ("primaryId", "answer") values ${sql.join(values)}`.execute(
      db,
    );
    kept += members.size;
    after = last;
  }
}

/** The answer of a customer from its live rows, as JSON text (frozen with this migration). */
function answerOf(primaryId: number, rows: readonly Row[]): string {
  const time = (row: Row) => Date.parse(row.createdAt);
  const ordered = [...rows].sort(
    (a, b) =>
      Number(b.id === primaryId) - Number(a.id === primaryId) || time(a) - time(b) || a.id - b.id,
  );
  const emails = new Set<string>();
  const phoneNumbers = new Set<string>();
  for (const row of ordered) {
    if (row.email !== null) {
      emails.add(row.email);
    }
    if (row.phoneNumber !== null) {
      phoneNumbers.add(row.phoneNumber);
    }
  }
  return JSON.stringify({
    primaryContactId: primaryId,
    emails: [...emails],
    phoneNumbers: [...phoneNumbers],
    secondaryContactIds: ordered.filter((row) => row.id !== primaryId).map((row) => row.id),
  });
}
