import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import type { DialectName } from "../database.js";

/**
 * MySQL/MariaDB only: two stored procedures that let a write transaction start and end in one
 * round trip each. mysql2 sends a statement only once the one before it is answered, so every
 * statement of a transaction was a round trip of its own: a new secondary made seven (BEGIN, the
 * identifier locks, the customer lock, the read, INSERT, COMMIT, RELEASE_ALL_LOCKS), against
 * PostgreSQL's pipelined two (README, Concurrency design). With these it makes four.
 *
 * - `identity_begin(first_lock, second_lock, wait_seconds, first_customer, second_customer)`
 *   starts the transaction, takes the two named identifier locks (GET_LOCK, waiting up to
 *   `wait_seconds`) and then the row locks of up to two customers' primaries, in the order given
 *   (the service passes them ascending; NULL: none). It answers one row, `locked`: 1, or 0 when an
 *   identifier lock timed out, in which case it locks no customer (the caller rolls back).
 * - `identity_commit()` commits and releases the session's named locks.
 *
 * Fixed statements with parameters only, no dynamic SQL. The customer lock is the store's own
 * `select id from Contact where id = ? for update`, which test/storage/statements.test.ts
 * EXPLAINs. PostgreSQL and SQLite get nothing: the first pipelines its statements, the second
 * has no locks to take.
 */
export function createMysqlProcedures(dialect: DialectName): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "mysql") {
        return;
      }
      // Each DDL statement commits on its own: a run stopped half-way leaves one of them, so
      // drop before creating.
      await dropProcedures(db);
      await createBeginProcedure(db);
      await sql`
        create procedure identity_commit()
        modifies sql data
        begin
          commit;
          do release_all_locks();
        end`.execute(db);
    },
    async down(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "mysql") {
        return;
      }
      await dropProcedures(db);
    },
  };
}

/**
 * This migration's `identity_begin`. Migration 0005 replaces it (customer locks that skip a row
 * merged away); its `down` creates this one again.
 */
export async function createBeginProcedure(db: Kysely<unknown>): Promise<void> {
  await sql`
        create procedure identity_begin(
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
              select id into found from Contact where id = first_customer for update;
            end if;
            if second_customer is not null then
              select id into found from Contact where id = second_customer for update;
            end if;
            select 1 as locked;
          end if;
        end`.execute(db);
}

async function dropProcedures(db: Kysely<unknown>): Promise<void> {
  await sql`drop procedure if exists identity_begin`.execute(db);
  await sql`drop procedure if exists identity_commit`.execute(db);
}
