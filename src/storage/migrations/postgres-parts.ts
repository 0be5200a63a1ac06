// Released migrations use these helpers: never change what they create for a released
// migration's arguments (their texts are pinned by test/storage/migrate.test.ts); a migration that
// needs something else passes arguments of its own.

/**
 * PostgreSQL's `identity_identify`, as migration 0006 created it (`toldWhatToExpect` false: five
 * parameters, it reads before it locks) and as migration 0008 adds it beside that one
 * (`toldWhatToExpect` true: two more parameters, `expects` and `expected_customer`; when
 * `expects`, it takes the identifier locks and the expected customer's lock first, then reads
 * under them only). Each migration documents its own rules.
 */
export function identifyFunction(toldWhatToExpect: boolean): string {
  const parameters = toldWhatToExpect
    ? ",\n          expects boolean,\n          expected_customer integer"
    : "";
  const prelude = toldWhatToExpect ? TOLD_PRELUDE : "";
  return `
        create function identity_identify(
          request_email varchar,
          request_phone varchar,
          first_lock bigint,
          second_lock bigint,
          request_time timestamptz${parameters}
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
${prelude}            found_rows := '{}';
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
        $$`;
}

/**
 * The start of each attempt when told what to expect (the cache's lead, or the service's own
 * read): the locks in the locked transaction's order, once, before the first read, which then
 * reads under them only; the rest of the loop is unchanged, so a read that finds another customer
 * than the one expected (or one where none was) leaves the write to the locked transaction.
 */
const TOLD_PRELUDE = `            -- Told what to expect: the identifier locks, then the expected customer's (only a
            -- live primary: one merged away meanwhile needs the locked transaction), before the
            -- read, which then runs under the locks only.
            if expects and not locked then
              perform pg_advisory_xact_lock(first_lock), pg_advisory_xact_lock(second_lock);
              if expected_customer is not null then
                perform from "Contact" c
                where c.id = expected_customer and c."linkedId" is null for update;
                exit when not found;
              end if;
              locked := true;
              locked_customer := expected_customer;
            end if;
`;
