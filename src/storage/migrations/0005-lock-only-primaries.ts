import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import type { DialectName } from "../database.js";
import { createBeginProcedure } from "./0004-create-mysql-procedures.js";

/**
 * MySQL/MariaDB only: `identity_begin` (migration 0004) again, with customer locks that take only
 * a row that is still a primary, as the store's own customer lock does (contact.store.ts,
 * `lockCustomer`).
 *
 * A transaction locks the customers it was told of (a cache lead) or read; one of them may have
 * been merged away meanwhile. Its row is then a secondary of another customer, whose holder
 * relinks that row: holding it while waiting for that customer (found next, with a higher id)
 * was a deadlock, seen under the two-process concurrency test. The condition `linkedId is null`
 * leaves such a row alone. MariaDB keeps the lock of a row read by a `const` primary-key lookup
 * even when the rest of the condition fails; read as a range, the row is unlocked again (READ
 * COMMITTED), hence `id >= x and id <= x`.
 *
 * The procedure's signature and answer are unchanged: the store runs with either version.
 */
export function lockOnlyPrimaries(dialect: DialectName): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "mysql") {
        return;
      }
      // MariaDB replaces the procedure in one statement, so instances running meanwhile always
      // find one. MySQL has no CREATE OR REPLACE PROCEDURE: DROP and CREATE commit each on their
      // own, a call between them fails (a database error), and a run stopped between them
      // leaves no identity_begin, which the next run creates.
      const { rows } = await sql<{ version: string }>`select version() as version`.execute(db);
      const mariadb = /mariadb/i.test(rows[0]?.version ?? "");
      if (!mariadb) {
        await sql`drop procedure if exists identity_begin`.execute(db);
      }
      await sql`
        ${sql.raw(mariadb ? "create or replace" : "create")} procedure identity_begin(
          in first_lock varchar(64),
          in second_lock varchar(64),
          in wait_seconds int,
          in first_customer int,
          in second_customer int
        )
        modifies sql data
        begin
          declare found int;
          declare continue handler for not found set found = null;
          start transaction;
          if coalesce(get_lock(first_lock, wait_seconds), 0) <> 1
            or coalesce(get_lock(second_lock, wait_seconds), 0) <> 1 then
            select 0 as locked;
          else
            if first_customer is not null then
              select id into found from Contact
                where linkedId is null and id >= first_customer and id <= first_customer
                for update;
            end if;
            if second_customer is not null then
              select id into found from Contact
                where linkedId is null and id >= second_customer and id <= second_customer
                for update;
            end if;
            select 1 as locked;
          end if;
        end`.execute(db);
    },
    async down(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "mysql") {
        return;
      }
      await sql`drop procedure if exists identity_begin`.execute(db);
      await createBeginProcedure(db);
    },
  };
}
