import { sql } from "kysely";
import type { Kysely, Migration } from "kysely";
import type { DialectName } from "../database.js";

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
      await sql`
        create function identity_identify(
          request_email varchar,
          request_phone varchar,
          first_lock bigint,
          second_lock bigint,
          request_time timestamptz
        )
        returns table (
          id integer,
          email varchar,
          "phoneNumber" varchar,
          "linkedId" integer,
          "linkPrecedence" varchar,
          "createdAt" timestamptz,
          outcome text
        )
        language plpgsql
        as $$
        #variable_conflict use_column
        declare
          r "Contact";
          found_rows "Contact"[];
          primaries integer[];
          customer integer;
          several boolean;
          has_email boolean;
          has_phone boolean;
          newest timestamptz;
          locked boolean := false;
          locked_customer integer;
        begin
          loop
            found_rows := '{}';
            primaries := '{}';
            customer := null;
            several := false;
            has_email := request_email is null;
            has_phone := request_phone is null;
            newest := null;
            -- The store's customers read: one statement, so one committed snapshot.
            for r in
              with matched as (
                select distinct coalesce(m."linkedId", m.id) as pid
                from "Contact" m
                where m."deletedAt" is null
                  and (m.email = request_email or m."phoneNumber" = request_phone)
              )
              select c.* from matched join "Contact" c on c.id = matched.pid
              where c."deletedAt" is null
              union all
              select c.* from matched join "Contact" c on c."linkedId" = matched.pid
              where c."deletedAt" is null
            loop
              found_rows := found_rows || r;
              if r.email = request_email or r."phoneNumber" = request_phone then
                if customer is null then
                  customer := coalesce(r."linkedId", r.id);
                elsif customer <> coalesce(r."linkedId", r.id) then
                  several := true;
                end if;
              end if;
              if r."linkedId" is null then
                primaries := primaries || r.id;
              end if;
              has_email := has_email or coalesce(r.email = request_email, false);
              has_phone := has_phone or coalesce(r."phoneNumber" = request_phone, false);
              newest := greatest(newest, r."createdAt");
            end loop;
            -- Two customers (a merge) or a customer whose primary is soft-deleted (a promotion):
            -- the service's locked transaction.
            exit when several or (customer is not null and not customer = any(primaries));
            outcome := case
              when customer is null then 'created'
              when has_email and has_phone then 'unchanged'
              else 'secondary_added' end;
            -- A write under locks of another customer than the one read before them, or of one
            -- where there was none: the locked transaction, which locks what it finds.
            exit when outcome <> 'unchanged' and locked
              and customer is distinct from locked_customer;
            if outcome = 'unchanged' or locked then
              if outcome <> 'unchanged' then
                -- The request's time on the service's clock, moved on by the time spent here
                -- (the locks' waits), so taken after the locks as the locked transaction takes
                -- it; a secondary is never older than its customer's newest row (planIdentify).
                newest := greatest(
                  request_time + (clock_timestamp() - statement_timestamp()),
                  newest
                );
                insert into "Contact" as c
                  (email, "phoneNumber", "linkedId", "linkPrecedence", "createdAt", "updatedAt")
                values (
                  request_email, request_phone, customer,
                  case when customer is null then 'primary' else 'secondary' end,
                  newest,
                  newest
                )
                returning c.* into r;
                found_rows := found_rows || r;
              end if;
              foreach r in array found_rows loop
                id := r.id;
                email := r.email;
                "phoneNumber" := r."phoneNumber";
                "linkedId" := r."linkedId";
                "linkPrecedence" := r."linkPrecedence";
                "createdAt" := r."createdAt";
                return next;
              end loop;
              return;
            end if;
            -- It writes: the identifier locks, then the customer's, then the read again (above),
            -- which must find the same customer, or none again.
            perform pg_advisory_xact_lock(first_lock), pg_advisory_xact_lock(second_lock);
            if customer is not null then
              perform from "Contact" c where c.id = customer and c."linkedId" is null for update;
              exit when not found;
            end if;
            locked := true;
            locked_customer := customer;
          end loop;
          outcome := 'fallback';
          return next;
        end
        $$`.execute(db);
    },
    async down(db: Kysely<unknown>): Promise<void> {
      if (dialect !== "postgres") {
        return;
      }
      await sql`drop function if exists identity_identify`.execute(db);
    },
  };
}
