import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import type { DialectName } from "../database.js";

/**
 * SQLite only: each customer's answer, kept ready as the JSON text the API answers with, under
 * its primary's id. The service writes it in the transaction of every change to the customer, so
 * a repeat order reads one short row instead of the customer's rows (README, Speed decisions).
 *
 * Triggers drop a customer's answer whenever any of its rows is inserted, changed or deleted, by
 * the service or by anything else (a hand edit, a soft-delete, an older build of the service): an
 * answer that exists was written after the last change to its customer, in the same transaction
 * as that change or a later one. A customer without one is read from its rows, and its next write
 * transaction keeps its answer again.
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
      const group = (row: "new" | "old") => sql.raw(`coalesce(${row}."linkedId", ${row}."id")`);
      await sql`create trigger "CustomerAnswer_contact_insert" after insert on "Contact" begin delete from "CustomerAnswer" where "primaryId" = ${group("new")}; end`.execute(
        db,
      );
      await sql`create trigger "CustomerAnswer_contact_update" after update on "Contact" begin delete from "CustomerAnswer" where "primaryId" in (${group("old")}, ${group("new")}); end`.execute(
        db,
      );
      await sql`create trigger "CustomerAnswer_contact_delete" after delete on "Contact" begin delete from "CustomerAnswer" where "primaryId" = ${group("old")}; end`.execute(
        db,
      );
    },

    async down(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "sqlite") {
        return;
      }
      for (const trigger of ["insert", "update", "delete"]) {
        await sql`drop trigger ${sql.ref(`CustomerAnswer_contact_${trigger}`)}`.execute(db);
      }
      await db.schema.dropTable("CustomerAnswer").execute();
    },
  };
}
