import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import type { DialectName } from "../database.js";
import { binaryNoPadCollation } from "./mysql-parts.js";

/**
 * MySQL/MariaDB only: `identity_identify`, the procedure twin of PostgreSQL's function of the
 * same name (migration 0006). It reconciles a request that involves at most one customer in one
 * CALL, so in one round trip, where the locked transaction took four or five (mysql2 sends a
 * statement only once the one before it is answered). Anything else (a merge, a customer whose
 * primary is soft-deleted, a write whose customer changed under its locks) it answers `fallback`
 * without writing, and the service goes on with its read and locked transaction as before
 * (README, Concurrency design).
 *
 * `identity_identify(request_email, request_phone, first_lock, second_lock, wait_seconds,
 * request_time, expects, expected_customer)`:
 *
 * 1. Unless it `expects` 1, one aggregate read of the rows the request matches: the lowest and
 *    highest customer (primary id) among them, and whether one has the request's email and one
 *    its phone. Two customers: `fallback`.
 * 2. One customer that already holds every value of the request: its rows (another statement),
 *    `unchanged`, with no lock taken.
 * 3. Otherwise, or at once when it `expects` 1 (the service's read or its cache named
 *    `expected_customer`, or none when null), it starts a transaction, takes the two identifier
 *    locks (the locked transaction's GET_LOCK names, waiting up to `wait_seconds`; a timeout
 *    answers `timeout`) and, for one customer, the row lock of its primary (`identity_begin`'s
 *    lock, and only a live primary: a customer merged away or soft-deleted meanwhile answers
 *    `fallback`), then reads as in 1 and 2 (READ COMMITTED: the latest committed rows). A write
 *    now of another customer than the one locked (or of one where there was none): `fallback`.
 * 4. No customer: inserts a primary, `created`. One customer that lacks a value of the request:
 *    inserts one secondary under its primary, `secondary_added`. The row's time is
 *    `request_time` (the service's clock) plus the time the CALL has run, so taken after the
 *    locks; a secondary's is never older than its customer's newest row (planIdentify's rule).
 *    Then the customer's live rows as the answer, read under the locks, COMMIT and the release
 *    of the named locks.
 *
 * The locks are taken in the locked transaction's order (identifier locks, then one customer),
 * and nothing else is awaited after the customer lock, so it cannot deadlock with those
 * transactions. An error rolls back and releases the named locks before it reaches the caller;
 * an interrupted GET_LOCK (KILL QUERY, max_statement_time) aborts the CALL past its handler, so
 * the store rolls back and releases them too. The run time is measured with SYSDATE() in the
 * session's time zone: the service's sessions are UTC (storage/database.ts), where no daylight
 * saving moves it.
 * Fixed statements, no dynamic SQL. The parameters carry the columns' binary NO PAD collation,
 * so that comparisons are the columns' own and use their indexes.
 */
export function createMysqlIdentify(dialect: DialectName): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "mysql") {
        return;
      }
      const collation = sql.raw(await binaryNoPadCollation(db));
      // DROP and CREATE commit each on their own: a run stopped between them leaves none.
      await sql`drop procedure if exists identity_identify`.execute(db);
      await sql`
        create procedure identity_identify(
          in request_email varchar(254) character set utf8mb4 collate ${collation},
          in request_phone varchar(16) character set utf8mb4 collate ${collation},
          in first_lock varchar(64),
          in second_lock varchar(64),
          in wait_seconds int,
          in request_time datetime(3),
          in expects int,
          in expected_customer int
        )
        modifies sql data
        main: begin
          declare started datetime(6) default sysdate(6);
          declare lo int default expected_customer;
          declare hi int;
          declare has_email int;
          declare has_phone int;
          declare locked int default 0;
          declare locked_customer int;
          declare found_id int;
          declare newest datetime(3);
          declare outcome varchar(16);
          declare continue handler for not found set found_id = null;
          declare exit handler for sqlexception
          begin
            rollback;
            do release_all_locks();
            resignal;
          end;

          attempt: loop
            -- Expecting a customer (or none), it locks first and reads under the locks only.
            if locked = 1 or expects = 0 then
              -- The customers the request matches, in one statement (one committed snapshot).
              select
                min(coalesce(m.linkedId, m.id)),
                max(coalesce(m.linkedId, m.id)),
                request_email is null or coalesce(max(m.email = request_email), 0) = 1,
                request_phone is null or coalesce(max(m.phoneNumber = request_phone), 0) = 1
              into lo, hi, has_email, has_phone
              from Contact m
              where m.deletedAt is null
                and (m.email = request_email or m.phoneNumber = request_phone);
              -- Two customers (a merge): the service's locked transaction.
              if lo <> hi then
                leave attempt;
              end if;
              set outcome = case
                when lo is null then 'created'
                when has_email and has_phone then 'unchanged'
                else 'secondary_added' end;
              -- A write under locks of another customer than the one locked, or of one where
              -- there was none: the locked transaction, which locks what it finds.
              if outcome <> 'unchanged' and locked = 1 and not (lo <=> locked_customer) then
                leave attempt;
              end if;
              if outcome = 'unchanged' or locked = 1 then
                if outcome <> 'unchanged' then
                  -- The request's time on the service's clock, moved on by the time spent here
                  -- (the locks' waits); a secondary is never older than its customer's newest
                  -- row.
                  set newest = request_time
                    + interval timestampdiff(microsecond, started, sysdate(6)) microsecond;
                  if lo is not null then
                    select greatest(coalesce(max(c.createdAt), newest), newest) into newest
                    from Contact c
                    where c.deletedAt is null and (c.id = lo or c.linkedId = lo);
                  end if;
                  insert into Contact
                    (email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt)
                  values (
                    request_email, request_phone, lo,
                    if(lo is null, 'primary', 'secondary'),
                    newest, newest
                  );
                  if lo is null then
                    set lo = last_insert_id();
                  end if;
                end if;
                -- The answer: the customer's live rows; under the locks when it wrote, so
                -- exactly what it commits. Without a lock another statement: a customer merged
                -- away or soft-deleted meanwhile shows no primary, and the service then goes to
                -- the locked transaction.
                select c.id, c.email, c.phoneNumber, c.linkedId, c.linkPrecedence, c.createdAt,
                  outcome
                from Contact c where c.deletedAt is null and c.id = lo
                union all
                select c.id, c.email, c.phoneNumber, c.linkedId, c.linkPrecedence, c.createdAt,
                  outcome
                from Contact c where c.deletedAt is null and c.linkedId = lo;
                if locked = 1 then
                  commit;
                  do release_all_locks();
                end if;
                leave main;
              end if;
            end if;
            -- It writes: the identifier locks, then the customer's (only a live primary: one
            -- merged away or soft-deleted meanwhile needs the locked transaction), then the read
            -- (above), which must find the same customer, or none again.
            -- READ COMMITTED, whatever the caller's session says (the service's already is).
            set transaction isolation level read committed;
            start transaction;
            if coalesce(get_lock(first_lock, wait_seconds), 0) <> 1
              or coalesce(get_lock(second_lock, wait_seconds), 0) <> 1 then
              set outcome = 'timeout';
              leave attempt;
            end if;
            if lo is not null then
              set found_id = null;
              select c.id into found_id from Contact c
                where c.linkedId is null and c.id >= lo and c.id <= lo and c.deletedAt is null
                for update;
              if found_id is null then
                leave attempt;
              end if;
            end if;
            set locked = 1;
            set locked_customer = lo;
          end loop;
          set outcome = if(outcome <=> 'timeout', 'timeout', 'fallback');
          rollback;
          do release_all_locks();
          select null as id, null as email, null as phoneNumber, null as linkedId,
            null as linkPrecedence, null as createdAt, outcome;
        end`.execute(db);
    },
    async down(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "mysql") {
        return;
      }
      await sql`drop procedure if exists identity_identify`.execute(db);
    },
  };
}
