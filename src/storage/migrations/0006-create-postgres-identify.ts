import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import type { DialectName } from "../database.js";
import { identifyFunction } from "./postgres-parts.js";

/**
 * PostgreSQL only: `identity_identify`, which reconciles a request that involves at most one
 * customer in one statement, so in one round trip and its own transaction, where the locked
 * transaction took two or three round trips. The rest (a merge, a customer whose primary is
 * soft-deleted, a write whose customer changed under its locks) it answers `fallback` without
 * writing, and the service goes on with its read and locked transaction as before (README,
 * Concurrency design).
 *
 * `identity_identify(request_email, request_phone, first_lock, second_lock, request_time)`:
 *
 * 1. Reads the customers the request matches, every live row of them, in one statement (the
 *    store's customers read). Two or more customers, or one whose primary is soft-deleted:
 *    `fallback`.
 * 2. One customer that already holds every value of the request: its rows, `unchanged`, with no
 *    lock taken.
 * 3. Otherwise it takes the two identifier locks (the locked transaction's advisory keys) and,
 *    for one customer, the row lock of its primary (`… where linkedId is null … for update`: a
 *    customer merged away meanwhile is not locked, and answers `fallback`), then reads again, as
 *    in 1 and 2. A write now of another customer than the one locked (or of one where there was
 *    none): `fallback`.
 * 4. No customer: inserts a primary and answers it, `created`. One customer that lacks a value
 *    of the request: inserts one secondary under its primary and answers the customer's rows
 *    with it, `secondary_added`. The row's time is `request_time` (the service's clock) plus the
 *    time the statement has run, so taken after the locks; a secondary's is never older than
 *    its customer's newest row (planIdentify's rule).
 *
 * The locks are taken in the locked transaction's order (identifier locks first, then one
 * customer), and nothing else is awaited after the customer lock, so it cannot deadlock with
 * those transactions. Fixed statements, no dynamic SQL; test/storage/identify-simple.test.ts
 * checks their plans with auto_explain. The service runs it as a named prepared statement: a
 * later migration that changes its result columns must give it a new name.
 */
export function createPostgresIdentify(dialect: DialectName): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "postgres") {
        return;
      }
      await sql.raw(identifyFunction(false)).execute(db);
    },
    async down(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "postgres") {
        return;
      }
      await sql`drop function if exists identity_identify`.execute(db);
    },
  };
}
