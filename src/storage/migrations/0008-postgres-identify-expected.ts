import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import type { DialectName } from "../database.js";
import { identifyFunction } from "./postgres-parts.js";

/**
 * PostgreSQL only: `identity_identify` told what to expect, as MySQL/MariaDB's procedure of the
 * same name is (migration 0007). A second function of the same name, with two more parameters,
 * beside migration 0006's, which stays for instances not yet upgraded:
 *
 * `identity_identify(request_email, request_phone, first_lock, second_lock, request_time, expects,
 * expected_customer)`.
 *
 * Not `expects`: migration 0006's function, to the letter (read, then lock and read again).
 * `expects` (the cache's lead named `expected_customer`, or the service's own read found it, or
 * none when null): it takes the two identifier locks and, for a customer, the row lock of its
 * primary (`… where linkedId is null … for update`: one merged away meanwhile answers
 * `fallback`) first, then reads once, under the locks, where 0006's function read before it
 * locked and again after. What that read finds is handled as in 0006: one customer that holds
 * every value of the request, `unchanged`; a write for the customer locked (or none, for no
 * customer) inserts its row; a write for another customer than the one locked, or two customers,
 * or a soft-deleted primary, `fallback`, having written nothing. The locks are taken in the
 * locked transaction's order and nothing else is awaited after the customer lock, as in 0006.
 */
export function createPostgresIdentifyExpected(dialect: DialectName): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "postgres") {
        return;
      }
      await sql.raw(identifyFunction(true)).execute(db);
    },
    async down(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "postgres") {
        return;
      }
      await sql`drop function if exists identity_identify(varchar, varchar, bigint, bigint, timestamptz, boolean, integer)`.execute(
        db,
      );
    },
  };
}
