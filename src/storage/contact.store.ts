import { setTimeout as sleep } from "node:timers/promises";
import { CompiledQuery, sql } from "kysely";
import type { Kysely } from "kysely";
import { identifierDigest, identifierKeys } from "../domain/contact.js";
import type { Contact, Customer, IdentifyRequest } from "../domain/contact.js";
import { consolidate } from "../domain/reconcile.js";
import type { ReconcilePlan } from "../domain/reconcile.js";
import { RetryTransactionError, StaleCustomerError } from "../service/contact-store.js";
import type {
  AnswerLookup,
  ContactStore,
  ContactTransaction,
  SimpleIdentify,
} from "../service/contact-store.js";
import { endOfTurn } from "../end-of-turn.js";
import { lockTimeoutSeconds } from "./database.js";
import type { Database, DialectName, Send } from "./database.js";
import { asDatabaseError, DatabaseError, isSqliteBusy } from "./errors.js";
import { FixedStatement } from "./fixed-statement.js";
import { storedTime } from "./schema.js";
import type { ContactRow, DB, MergeKind } from "./schema.js";

type ContactColumns = Pick<
  ContactRow,
  "id" | "email" | "phoneNumber" | "linkedId" | "linkPrecedence" | "createdAt"
>;

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  readonly maxAttempts: number;
  /** Upper bound of the first backoff; each later one doubles, with full jitter. */
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  /**
   * No attempt starts once this long has passed since the first one; none by default. Past the
   * handler timeout no client waits for the answer any more (it was answered 503), while each
   * attempt held a pooled connection for up to a lock timeout.
   */
  readonly maxElapsedMs?: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 12,
  baseDelayMs: 4,
  maxDelayMs: 250,
};

export interface ContactStoreHooks {
  /**
   * Called before each retry of a transaction, with the error that caused it; attempt 0 when
   * `identifySimple` gave up on a lock and left the request to the locked transaction.
   */
  readonly onRetry?: (attempt: number, cause: unknown, reason: RetryReason) => void;
}

function toMillis(value: Date | string): number {
  return value instanceof Date ? value.getTime() : Date.parse(value);
}

function toContact(row: ContactColumns): Contact {
  return {
    id: row.id,
    email: row.email,
    phoneNumber: row.phoneNumber,
    linkedId: row.linkedId,
    linkPrecedence: row.linkPrecedence,
    createdAt: toMillis(row.createdAt),
  };
}

/** Why a transaction is run again: the `reason` of `db_transaction_retries_total`. */
export const RETRY_REASONS = [
  "deadlock",
  "lock_timeout",
  "serialization",
  "busy",
  // RetryTransactionError: the locked customers kept changing, or one was found out of order.
  "contention",
] as const;
export type RetryReason = (typeof RETRY_REASONS)[number];

/**
 * Deadlocks, serialization failures, lock timeouts, a busy SQLite file and a lock fixpoint that
 * did not settle are worth a retry: their reason; null for anything else.
 */
export function retryReason(error: unknown): RetryReason | null {
  const cause = error instanceof DatabaseError ? error.cause : error;
  if (cause instanceof RetryTransactionError) {
    return "contention";
  }
  if (cause instanceof LockTimeoutError) {
    return "lock_timeout";
  }
  if (typeof cause !== "object" || cause === null) {
    return null;
  }
  const { code, errno } = cause as { code?: unknown; errno?: unknown };
  // PostgreSQL: deadlock_detected, lock_not_available, serialization_failure; MySQL/MariaDB:
  // ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT.
  if (code === "40P01" || errno === 1213) {
    return "deadlock";
  }
  if (code === "55P03" || errno === 1205) {
    return "lock_timeout";
  }
  if (code === "40001") {
    return "serialization";
  }
  if (isSqliteBusy(cause) || (typeof code === "string" && code.startsWith("SQLITE_LOCKED"))) {
    return "busy";
  }
  return null;
}

class LockTimeoutError extends Error {
  constructor() {
    super("timed out waiting for an identifier lock");
    this.name = "LockTimeoutError";
  }
}

type Time = Date | string;

/** A merge log row: the customer `mergedId` moved under `winnerId`, and the request's identifiers. */
type MergeLogValues = [
  winnerId: number,
  mergedId: number,
  kind: MergeKind,
  email: string | null,
  phoneNumber: string | null,
  createdAt: Time,
];

/** The statements of the store, compiled once per database (see FixedStatement). */
interface Statements {
  readonly findCustomers: FixedStatement<[email: string | null, phoneNumber: string | null]>;
  readonly lockCustomer: FixedStatement<[id: number]>;
  readonly promote: FixedStatement<[id: number, updatedAt: Time]>;
  readonly relink: FixedStatement<[winnerId: number, group: number, updatedAt: Time]>;
  readonly logMerge: FixedStatement<MergeLogValues>;
  readonly insert: FixedStatement<
    [
      email: string | null,
      phoneNumber: string | null,
      linkedId: number | null,
      linkPrecedence: "primary" | "secondary",
      createdAt: Time,
    ]
  >;
  /**
   * PostgreSQL only (null elsewhere): two identifier locks (advisory keys). MySQL/MariaDB take
   * theirs in `identity_begin` (BEGIN_LOCKED).
   */
  readonly lockIdentifiers: FixedStatement<[first: string, second: string]> | null;
  /**
   * PostgreSQL only (null elsewhere): a request that involves at most one customer, reconciled in
   * one statement, the function `identity_identify` (migration 0006), told the customer to expect
   * (migration 0008).
   */
  readonly identifySimple: FixedStatement<
    [
      email: string | null,
      phoneNumber: string | null,
      first: string,
      second: string,
      now: Date,
      expects: boolean,
      expected: number | null,
    ]
  > | null;
  /**
   * MySQL/MariaDB only (null elsewhere): the same in one CALL of the procedure
   * `identity_identify` (migration 0007), which can be told the customer to expect.
   */
  readonly callIdentify: FixedStatement<
    [
      email: string | null,
      phoneNumber: string | null,
      first: string,
      second: string,
      now: Date,
      expects: 0 | 1,
      expected: number | null,
    ]
  > | null;
  /** SQLite only (null elsewhere): the customers a request matches, and the first one's answer. */
  readonly findAnswer: FixedStatement<[email: string | null, phoneNumber: string | null]> | null;
  /** SQLite only (null elsewhere): keeps a customer's answer. */
  readonly keepAnswer: FixedStatement<[primaryId: number, answer: string]> | null;
}

type CallIdentifyArgs = Parameters<NonNullable<Statements["callIdentify"]>["bind"]>[0];

/**
 * A row of `identifySimple`: the customer's rows; one row of nulls when it falls back (or, on
 * MySQL/MariaDB, when an identifier lock timed out).
 */
interface SimpleRow extends ContactColumns {
  readonly outcome: SimpleIdentify["outcome"] | "fallback" | "timeout";
}

/** The row of `findAnswer`: no match gives a row of nulls. */
interface AnswerRow {
  /** The lowest and highest customer (primary id) with a live row matching the request. */
  readonly lo: number | null;
  readonly hi: number | null;
  /** 1 when a matching row has the request's email (phone), 0 or null otherwise. */
  readonly e: number | null;
  readonly p: number | null;
  /** The kept answer of customer `lo`, if there is one. */
  readonly answer: string | null;
}

const CUSTOMER_COLUMNS = [
  "Contact.id",
  "Contact.email",
  "Contact.phoneNumber",
  "Contact.linkedId",
  "Contact.linkPrecedence",
  "Contact.createdAt",
] as const;

/**
 * MySQL/MariaDB's customers read: the matching rows joined to their customers' rows, once by id
 * (the primary) and once by linkedId (the secondaries), with no common table expression. MariaDB
 * keeps no plan for a prepared statement and optimizes it on every execution; the CTE, referenced
 * twice, cost it 0.21–0.24 ms of optimization a read, this shape 0.14–0.15 (README, Speed
 * decisions). A customer comes back once per matching row of it; rowsToContacts drops repeats.
 */
function customersByJoins(db: Kysely<DB>, email: string | null, phone: string | null) {
  const half = (on: "Customer.id" | "Customer.linkedId") =>
    db
      .selectFrom("Contact as Match")
      .innerJoin("Contact as Customer", (join) =>
        join.on(
          on,
          "=",
          sql<number>`coalesce(${sql.ref("Match.linkedId")}, ${sql.ref("Match.id")})`,
        ),
      )
      .select([
        "Customer.id",
        "Customer.email",
        "Customer.phoneNumber",
        "Customer.linkedId",
        "Customer.linkPrecedence",
        "Customer.createdAt",
      ])
      .where("Match.deletedAt", "is", null)
      .where((eb) => eb.or([eb("Match.email", "=", email), eb("Match.phoneNumber", "=", phone)]))
      .where("Customer.deletedAt", "is", null);
  return half("Customer.id").unionAll(half("Customer.linkedId")).compile();
}

function compileStatements(
  db: Kysely<DB>,
  dialect: DialectName,
  lockWaitSeconds: number,
): Statements {
  // Fixed shape: an absent field is bound as NULL, and `column = NULL` matches nothing. Joins (not
  // IN subqueries) so that every planner looks the members up by id and by linkedId through
  // their indexes: MariaDB scanned the table for `linkedId IN (subquery)`. UNION ALL: the
  // database need not sort out duplicates (a row is in both halves only if its primary is itself
  // a secondary, a chain the service never writes); rowsToContacts drops any by id.
  const findCustomers = FixedStatement.compile(2, (email: string | null, phone: string | null) =>
    dialect === "mysql"
      ? customersByJoins(db, email, phone)
      : db
          .with("matched", (qb) =>
            qb
              .selectFrom("Contact")
              .select(sql<number>`coalesce(${sql.ref("linkedId")}, ${sql.ref("id")})`.as("pid"))
              .distinct()
              .where("deletedAt", "is", null)
              .where((eb) => eb.or([eb("email", "=", email), eb("phoneNumber", "=", phone)])),
          )
          .selectFrom("matched")
          .innerJoin("Contact", "Contact.id", "matched.pid")
          .select(CUSTOMER_COLUMNS)
          .where("Contact.deletedAt", "is", null)
          .unionAll((eb) =>
            eb
              .selectFrom("matched")
              .innerJoin("Contact", "Contact.linkedId", "matched.pid")
              .select(CUSTOMER_COLUMNS)
              .where("Contact.deletedAt", "is", null),
          )
          .compile(),
  );
  // Only a row that is still a primary: one merged away since it was seen (a stale cache lead, a
  // late read) is the secondary of a customer whose holder relinks it, and holding it while
  // waiting for that customer would deadlock. PostgreSQL skips a row that does not match without
  // locking it. MariaDB keeps the lock of a row read by a `const` primary-key lookup even when the
  // rest of the condition fails; a range releases it (READ COMMITTED), hence the two bounds.
  // PostgreSQL keeps the lock when the statement had to wait for the row and it was merged away
  // meanwhile: then no other lock may be awaited (lockAndFind's StaleCustomerError, the
  // service's check of the read).
  const lockCustomer = FixedStatement.compile(1, (id: number) => {
    const query = db.selectFrom("Contact").select("id").where("linkedId", "is", null);
    return (
      dialect === "mysql"
        ? query.where("id", ">=", id).where("id", "<=", id)
        : query.where("id", "=", id)
    )
      .forUpdate()
      .compile();
  });
  const promote = FixedStatement.compile(2, (id: number, updatedAt: Time) =>
    db
      .updateTable("Contact")
      .set({ linkedId: null, linkPrecedence: "primary", updatedAt })
      .where("id", "=", id)
      .compile(),
  );
  const relink = FixedStatement.compile(3, (winnerId: number, group: number, updatedAt: Time) =>
    db
      .updateTable("Contact")
      .set({ linkedId: winnerId, linkPrecedence: "secondary", updatedAt })
      .where((eb) => eb.or([eb("id", "=", group), eb("linkedId", "=", group)]))
      .where("id", "<>", winnerId)
      .compile(),
  );
  const insert = FixedStatement.compile(
    5,
    (
      email: string | null,
      phoneNumber: string | null,
      linkedId: number | null,
      linkPrecedence: "primary" | "secondary",
      createdAt: Time,
    ) => {
      const query = db
        .insertInto("Contact")
        .values({ email, phoneNumber, linkedId, linkPrecedence, createdAt, updatedAt: createdAt });
      return dialect === "mysql" ? query.compile() : query.returning("id").compile();
    },
  );
  // Always two locks, so that the statement text never depends on the request. Taking the same
  // lock twice is re-entrant (in MySQL/MariaDB's identity_begin too).
  const lockIdentifiers =
    dialect === "postgres"
      ? FixedStatement.compile(2, (first: string, second: string) =>
          sql`select pg_advisory_xact_lock(${first}::bigint), pg_advisory_xact_lock(${second}::bigint)`.compile(
            db,
          ),
        )
      : null;
  const identifySimple =
    dialect === "postgres"
      ? FixedStatement.compile(
          7,
          (
            email: string | null,
            phone: string | null,
            first: string,
            second: string,
            now: Date,
            expects: boolean,
            expected: number | null,
          ) =>
            sql`select * from identity_identify(${email}, ${phone}, ${first}::bigint, ${second}::bigint, ${now}, ${expects}::boolean, ${expected}::integer)`.compile(
              db,
            ),
        )
      : null;
  const callIdentify =
    dialect === "mysql"
      ? FixedStatement.compile(
          7,
          (...[email, phone, first, second, now, expects, expected]: CallIdentifyArgs) =>
            // GET_LOCK's wait is a constant of the statement, as in identity_begin.
            CompiledQuery.raw("call identity_identify(?, ?, ?, ?, ?, ?, ?, ?)", [
              email,
              phone,
              first,
              second,
              lockWaitSeconds,
              now,
              expects,
              expected,
            ]),
        )
      : null;
  const logMerge = FixedStatement.compile(
    6,
    (...[winnerId, mergedId, kind, email, phoneNumber, createdAt]: MergeLogValues) =>
      db
        .insertInto("ContactMerge")
        .values({ winnerId, mergedId, kind, email, phoneNumber, createdAt })
        .compile(),
  );
  // One row, from the indexes of email and phone and the answers' primary key: which customers
  // the request matches, whether its email and phone are among their rows, and the lowest one's
  // kept answer (migration 0003).
  const findAnswer =
    dialect === "sqlite"
      ? FixedStatement.compile(2, (email: string | null, phone: string | null) =>
          db
            .with("matched", (qb) =>
              qb
                .selectFrom("Contact")
                .select((eb) => [
                  sql<number>`coalesce(${sql.ref("linkedId")}, ${sql.ref("id")})`.as("pid"),
                  eb("email", "=", email).as("e"),
                  eb("phoneNumber", "=", phone).as("p"),
                ])
                .where("deletedAt", "is", null)
                .where((eb) => eb.or([eb("email", "=", email), eb("phoneNumber", "=", phone)])),
            )
            .with("found", (qb) =>
              qb
                .selectFrom("matched")
                .select((eb) => [
                  eb.fn.min("pid").as("lo"),
                  eb.fn.max("pid").as("hi"),
                  eb.fn.max("e").as("e"),
                  eb.fn.max("p").as("p"),
                ]),
            )
            .selectFrom("found")
            .leftJoin("CustomerAnswer", "CustomerAnswer.primaryId", "found.lo")
            .select(["found.lo", "found.hi", "found.e", "found.p", "CustomerAnswer.answer"])
            .compile(),
        )
      : null;
  const keepAnswer =
    dialect === "sqlite"
      ? FixedStatement.compile(2, (primaryId: number, answer: string) =>
          db
            .insertInto("CustomerAnswer")
            .values({ primaryId, answer })
            .onConflict((oc) =>
              oc.column("primaryId").doUpdateSet((eb) => ({ answer: eb.ref("excluded.answer") })),
            )
            .compile(),
        )
      : null;
  return {
    findCustomers,
    lockCustomer,
    promote,
    relink,
    logMerge,
    insert,
    lockIdentifiers,
    identifySimple,
    callIdentify,
    findAnswer,
    keepAnswer,
  };
}

/** The rows as contacts, each id once. */
function rowsToContacts(rows: unknown[]): Contact[] {
  const contacts: Contact[] = [];
  const seen = new Set<number>();
  for (const row of rows as ContactColumns[]) {
    if (!seen.has(row.id)) {
      seen.add(row.id);
      contacts.push(toContact(row));
    }
  }
  return contacts;
}

const BEGIN = CompiledQuery.raw("begin");
const COMMIT = CompiledQuery.raw("commit");
const ROLLBACK = CompiledQuery.raw("rollback");
const RELEASE_LOCKS = CompiledQuery.raw("select release_all_locks()");
/** MySQL/MariaDB: COMMIT and the release of the named locks, in one round trip (migration 0004). */
const COMMIT_AND_RELEASE = CompiledQuery.raw("call identity_commit()");
/** MySQL/MariaDB: BEGIN, the identifier locks and up to two customer locks (migration 0004). */
const BEGIN_LOCKED = FixedStatement.compile(
  5,
  (...args: [string, string, number, number | null, number | null]) =>
    CompiledQuery.raw("call identity_begin(?, ?, ?, ?, ?)", args),
);
/** The customers `identity_begin` locks itself; any more are locked one statement each. */
const BEGIN_LOCKED_CUSTOMERS = 2;

type Result = Awaited<ReturnType<Send>>;

/**
 * The statements of one transaction, in order. Pipelined (PostgreSQL), each goes out at once,
 * behind those not yet answered, so that statements which need no answer of another share a round
 * trip; the server runs them in order, and after an error it only rolls back. Otherwise (MySQL,
 * whose COMMIT would keep the statements before a failed one; SQLite) each goes out once the one
 * before it has succeeded. Either way a statement's promise settles only after every earlier one
 * has succeeded: a transaction fails with its first error, never a later "transaction aborted".
 * (An error raised by the driver itself, before the server sees the statement, would not abort
 * the server's transaction; node-postgres raises one only for a value it cannot encode, and the
 * service binds only numbers, strings, dates and null.)
 */
class StatementQueue {
  private last: Promise<unknown> = Promise.resolve();
  private failed = false;

  constructor(
    private readonly send: Send,
    private readonly pipelined: boolean,
  ) {}

  /**
   * Resolves once every statement sent so far has succeeded; rejects with the first error (and,
   * like every promise of the queue, is no unhandled rejection when left unawaited).
   */
  drain(): Promise<unknown> {
    return this.last;
  }

  /** `check` judges the result (MySQL's GET_LOCK answers 0 on a timeout) before later ones settle. */
  run(query: CompiledQuery, doing: string, check?: (result: Result) => void): Promise<Result> {
    const sent =
      this.pipelined && !this.failed ? this.send(query) : this.last.then(() => this.send(query));
    sent.catch(() => undefined);
    const settled = this.last
      .then(() => sent)
      .then((result) => {
        check?.(result);
        return result;
      })
      .catch((error: unknown) => {
        this.failed = true;
        throw asDatabaseError(error, doing);
      });
    // Whoever needs the result awaits it; the statements after it fail with it either way.
    settled.catch(() => undefined);
    this.last = settled;
    return settled;
  }
}

class SqlContactTransaction implements ContactTransaction {
  private ended = false;

  /**
   * `begin`, when set (MySQL/MariaDB), starts the transaction on first use: it sends BEGIN and the
   * locks of the customers it is given that it can take in the same round trip, and returns the
   * customers still to lock. Elsewhere the transaction has begun already.
   */
  constructor(
    private readonly statements: Statements,
    private readonly queue: StatementQueue,
    private readonly dialect: DialectName,
    private begin: ((primaryIds: readonly number[]) => readonly number[]) | null = null,
  ) {}

  /** Sends the deferred BEGIN (MySQL/MariaDB), if not yet sent; the customers left to lock. */
  private begun(primaryIds: readonly number[]): readonly number[] {
    const { begin } = this;
    if (begin === null) {
      return primaryIds;
    }
    this.begin = null;
    return begin(primaryIds);
  }

  async lockAndFind(primaryIds: readonly number[], request: IdentifyRequest): Promise<Contact[]> {
    const toLock = this.begun(primaryIds);
    // SQLite: BEGIN IMMEDIATE already holds the only write lock there is.
    if (this.locksCustomers) {
      for (const [index, id] of toLock.entries()) {
        const locking = this.queue.run(
          this.statements.lockCustomer.bind([id]),
          "locking a customer",
        );
        if (index < toLock.length - 1) {
          // Another lock follows, and it may wait: not while holding a row merged away, which
          // PostgreSQL keeps locked when it changed during the wait (StaleCustomerError). So
          // each lock is answered before the next goes out; the last one shares the read's
          // round trip (the service checks it against the read).
          const { rows } = await locking;
          if (rows.length === 0) {
            throw new StaleCustomerError([id]);
          }
        }
      }
    }
    const result = await this.queue.run(
      this.statements.findCustomers.bind([request.email, request.phoneNumber]),
      "reading customers",
    );
    return rowsToContacts(result.rows);
  }

  get locksCustomers(): boolean {
    return this.dialect !== "sqlite";
  }

  /** True once `commit` has sent the work's writes (and, on the servers, COMMIT). */
  get committed(): boolean {
    return this.ended;
  }

  /** Sends the plan's writes and, on the servers, COMMIT behind them. */
  async commit(plan: ReconcilePlan, now: number, request: IdentifyRequest): Promise<Customer> {
    this.begun([]);
    const { winnerId, insert } = plan;
    const updatedAt = storedTime(this.dialect, now);
    const doing = "writing a plan";
    if (winnerId !== null && plan.promotedFrom !== null) {
      void this.queue.run(this.statements.promote.bind([winnerId, updatedAt]), doing);
    }
    if (winnerId !== null) {
      for (const group of plan.relinkGroups) {
        void this.queue.run(this.statements.relink.bind([winnerId, group, updatedAt]), doing);
        void this.queue.run(
          this.statements.logMerge.bind([
            winnerId,
            group,
            group === plan.promotedFrom ? "promotion" : "bridge",
            request.email,
            request.phoneNumber,
            updatedAt,
          ]),
          doing,
        );
      }
    }
    const linkPrecedence = winnerId === null ? "primary" : "secondary";
    const inserted =
      insert === null
        ? null
        : this.queue.run(
            this.statements.insert.bind([
              insert.email,
              insert.phoneNumber,
              winnerId,
              linkPrecedence,
              storedTime(this.dialect, insert.createdAt),
            ]),
            doing,
          );
    this.ended = true;
    const { keepAnswer } = this.statements;
    // The servers: COMMIT goes out behind the writes. SQLite: the session's batch commits once
    // every write of its transactions has run.
    const last =
      keepAnswer === null ? this.queue.run(commitStatement(this.dialect), "committing") : null;
    let added: Contact | null = null;
    if (insert !== null && inserted !== null) {
      const result = await inserted;
      const id =
        this.dialect === "mysql"
          ? Number(result.insertId)
          : (result.rows[0] as Pick<ContactRow, "id"> | undefined)?.id;
      if (id === undefined || !Number.isSafeInteger(id)) {
        throw new Error("the insert returned no id");
      }
      added = { id, ...insert, linkedId: winnerId, linkPrecedence };
    }
    const primaryId = winnerId ?? added?.id;
    if (primaryId === undefined) {
      throw new Error("unreachable: a plan without a winner inserts a primary");
    }
    const customer = consolidate(
      primaryId,
      added === null ? plan.members : [...plan.members, added],
    );
    if (keepAnswer !== null) {
      // SQLite: the customer's answer, kept in the same transaction.
      await this.queue.run(keepAnswer.bind([primaryId, JSON.stringify(customer)]), doing);
    }
    await last;
    return customer;
  }
}

/**
 * The Contact table in SQLite, MySQL/MariaDB or PostgreSQL.
 *
 * Writers serialize per identifier and per customer: PostgreSQL takes transaction-scoped advisory
 * locks, MySQL/MariaDB named locks (GET_LOCK, released after COMMIT), both on the SHA-256 of each
 * identifier key in sorted order, and then row locks on the primaries they change. SQLite has a
 * single writer: BEGIN IMMEDIATE.
 */
export class SqlContactStore implements ContactStore {
  private readonly statements: Statements;

  constructor(
    private readonly database: Database,
    private readonly retry: RetryPolicy = DEFAULT_RETRY_POLICY,
    private readonly hooks: ContactStoreHooks = {},
  ) {
    this.statements = compileStatements(
      database.db,
      database.dialect,
      lockTimeoutSeconds(database.options),
    );
  }

  async findCustomers(request: IdentifyRequest): Promise<Contact[]> {
    const query = this.statements.findCustomers.bind([request.email, request.phoneNumber]);
    try {
      const { sqlite } = this.database;
      if (sqlite !== null) {
        return await sqlite.read(() => rowsToContacts(sqlite.run(query)));
      }
      const { rows } = await this.database.db.executeQuery(query);
      // Answered with the turn's other reads, as SQLite's batched reads are (endOfTurn). Not
      // the writes: they gained nothing measurable from it.
      await endOfTurn();
      return rowsToContacts(rows);
    } catch (error) {
      throw asDatabaseError(error, "reading customers");
    }
  }

  get keepsAnswers(): boolean {
    return this.statements.findAnswer !== null;
  }

  async findAnswer(request: IdentifyRequest): Promise<AnswerLookup> {
    const { sqlite } = this.database;
    const { findAnswer } = this.statements;
    if (sqlite === null || findAnswer === null) {
      throw new Error("only SQLite keeps answers");
    }
    const query = findAnswer.bind([request.email, request.phoneNumber]);
    try {
      const row = await sqlite.read(() => sqlite.run(query)[0] as AnswerRow | undefined);
      if (row === undefined || row.lo === null || row.hi === null) {
        return { holds: false, answer: null, customers: [] };
      }
      const holds =
        row.lo === row.hi &&
        (request.email === null || row.e === 1) &&
        (request.phoneNumber === null || row.p === 1);
      return {
        holds,
        answer: holds ? row.answer : null,
        customers: row.lo === row.hi ? [row.lo] : [row.lo, row.hi],
      };
    } catch (error) {
      throw asDatabaseError(error, "reading kept answers");
    }
  }

  get identifiesSimpleRequests(): boolean {
    return this.statements.identifySimple !== null || this.statements.callIdentify !== null;
  }

  async identifySimple(
    request: IdentifyRequest,
    now: number,
    expected: readonly number[] | null = null,
  ): Promise<SimpleIdentify | null> {
    const { identifySimple, callIdentify } = this.statements;
    const { email, phoneNumber } = request;
    const [first, second] = this.lockKeys(lockDigests(identifierKeys(request)));
    const time = new Date(now);
    // Told one customer (or none): the statement locks first and reads under the locks only.
    const expects = expected !== null && expected.length <= 1;
    const customer = expects ? (expected[0] ?? null) : null;
    // The arguments both servers' statements take first.
    const leading = [email, phoneNumber, first, second, time] as const;
    let rows: SimpleRow[];
    try {
      if (identifySimple !== null) {
        const query = identifySimple.bind([...leading, expects, customer]);
        rows = (await this.database.db.executeQuery(query)).rows as SimpleRow[];
      } else if (callIdentify !== null) {
        const query = callIdentify.bind([...leading, expects ? 1 : 0, customer]);
        rows = await this.database.db.connection().execute(async (conn) => {
          try {
            // A CALL answers its result sets, then its status.
            return (await conn.executeQuery(query)).rows[0] as SimpleRow[];
          } catch (error) {
            // The procedure's handler rolls back and releases its locks, but an interrupted
            // GET_LOCK (KILL QUERY, max_statement_time) aborts it past the handler: the
            // connection would go back to the pool inside its transaction, holding a lock.
            await abandon((statement) => conn.executeQuery(statement), "mysql");
            throw error;
          }
        });
      } else {
        throw new Error("SQLite does not identify in one statement");
      }
    } catch (error) {
      // A lock that timed out (or a deadlock, which its lock order rules out): counted as a
      // retry, which the locked transaction makes.
      const reason = retryReason(error);
      if (reason !== null) {
        this.hooks.onRetry?.(0, error, reason);
        return null;
      }
      throw asDatabaseError(error, "identifying");
    }
    const outcome = rows[0]?.outcome ?? "fallback";
    if (outcome === "timeout") {
      // MySQL/MariaDB's GET_LOCK answers 0 when it times out, and the CALL "timeout".
      this.hooks.onRetry?.(0, new LockTimeoutError(), "lock_timeout");
      return null;
    }
    const primary = rows.find((row) => row.linkedId === null);
    if (outcome === "fallback" || primary === undefined) {
      return null;
    }
    return { outcome, primaryId: primary.id, rows: rowsToContacts(rows) };
  }

  async withLockedTransaction<T>(
    identifierKeys: readonly string[],
    work: (tx: ContactTransaction) => Promise<T>,
  ): Promise<T> {
    // SQLite needs no identifier locks: its batch holds the only write lock.
    const digests = this.database.sqlite === null ? lockDigests(identifierKeys) : [];
    const started = performance.now();
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.runOnce(digests, work);
      } catch (error) {
        const reason = retryReason(error);
        const late = performance.now() - started >= (this.retry.maxElapsedMs ?? Infinity);
        if (attempt >= this.retry.maxAttempts || reason === null || late) {
          throw error instanceof RetryTransactionError
            ? asDatabaseError(error, "contention")
            : error;
        }
        this.hooks.onRetry?.(attempt, error instanceof DatabaseError ? error.cause : error, reason);
        const ceiling = Math.min(
          this.retry.maxDelayMs,
          this.retry.baseDelayMs * 2 ** (attempt - 1),
        );
        await sleep(Math.random() * ceiling);
      }
    }
  }

  private async runOnce<T>(
    digests: readonly string[],
    work: (tx: ContactTransaction) => Promise<T>,
  ): Promise<T> {
    const { dialect, sqlite, postgres } = this.database;
    if (sqlite !== null) {
      // One writer: BEGIN IMMEDIATE of the session's batch is the lock (group commit).
      const send: Send = (query) => Promise.resolve({ rows: sqlite.run(query) });
      const queue = new StatementQueue(send, false);
      return sqlite.write(() => work(new SqlContactTransaction(this.statements, queue, dialect)));
    }
    const attempt = { connected: false };
    try {
      if (postgres !== null) {
        return await postgres.withConnection((send) => {
          attempt.connected = true;
          return this.transact(send, true, digests, work);
        });
      }
      return await this.database.db.connection().execute((conn) => {
        attempt.connected = true;
        return this.transact((query) => conn.executeQuery(query), false, digests, work);
      });
    } catch (error) {
      // Before the callback ran, the pool could not give a connection (unreachable, timed out).
      throw attempt.connected ? error : asDatabaseError(error, "acquiring a connection");
    }
  }

  /**
   * One attempt of a write transaction on a pinned connection of a server. Pipelined, BEGIN and
   * the identifier locks go out with the work's first statements, and COMMIT with its last.
   */
  private async transact<T>(
    send: Send,
    pipelined: boolean,
    digests: readonly string[],
    work: (tx: ContactTransaction) => Promise<T>,
  ): Promise<T> {
    const { dialect } = this.database;
    const queue = new StatementQueue(send, pipelined);
    let tx: SqlContactTransaction;
    if (dialect === "mysql") {
      // BEGIN, the identifier locks and the first customers' locks go out as one CALL, made
      // when the work names its first customers (lockAndFind).
      tx = new SqlContactTransaction(this.statements, queue, dialect, (primaryIds) =>
        this.beginLocked(queue, digests, primaryIds),
      );
    } else {
      void queue.run(BEGIN, "beginning a transaction");
      this.lockIdentifiers(queue, digests);
      tx = new SqlContactTransaction(this.statements, queue, dialect);
    }
    try {
      const result = await work(tx);
      if (!tx.committed) {
        await queue.run(commitStatement(dialect), "committing");
      }
      return result;
    } catch (error) {
      // Past the queue, which sends nothing after a failure.
      await abandon(send, dialect);
      throw error;
    }
  }

  /** The two identifier lock keys: PostgreSQL's advisory keys, MySQL's lock names. */
  private lockKeys(digests: readonly string[]): [string, string] {
    const first = digests[0] ?? "";
    const second = digests[1] ?? first;
    const lockKey =
      this.database.dialect === "postgres"
        ? (digest: string) => BigInt.asIntN(64, BigInt(`0x${digest.slice(0, 16)}`)).toString()
        : (digest: string) => `identity:${digest.slice(0, 48)}`;
    return [lockKey(first), lockKey(second)];
  }

  private lockIdentifiers(queue: StatementQueue, digests: readonly string[]): void {
    const { lockIdentifiers } = this.statements;
    if (digests.length === 0 || lockIdentifiers === null) {
      return;
    }
    void queue.run(lockIdentifiers.bind(this.lockKeys(digests)), "locking identifiers");
  }

  /**
   * MySQL/MariaDB: BEGIN, the identifier locks and the locks of the first customers, in one CALL
   * of `identity_begin`. Returns the customers still to lock.
   */
  private beginLocked(
    queue: StatementQueue,
    digests: readonly string[],
    primaryIds: readonly number[],
  ): readonly number[] {
    const [first, second] = this.lockKeys(digests);
    const wait = lockTimeoutSeconds(this.database.options);
    void queue.run(
      BEGIN_LOCKED.bind([first, second, wait, primaryIds[0] ?? null, primaryIds[1] ?? null]),
      "locking identifiers",
      (result) => {
        // GET_LOCK answers 0, not an error, when it times out: the CALL then answers locked 0.
        const [set] = result.rows as [{ locked?: number }[] | undefined];
        if (set?.[0]?.locked !== 1) {
          throw new LockTimeoutError();
        }
      },
    );
    return primaryIds.slice(BEGIN_LOCKED_CUSTOMERS);
  }
}

/** The digests of a request's identifier keys, each once, in lock order (ascending). */
function lockDigests(identifierKeys: readonly string[]): string[] {
  const digests = [...new Set(identifierKeys.map(identifierDigest))].sort();
  if (digests.length > 2) {
    throw new Error("a request has at most two identifiers");
  }
  return digests;
}

/**
 * After a failure on a pinned connection: ROLLBACK and, on MySQL/MariaDB, the release of the
 * named locks, which belong to the session, not the transaction (identity_commit releases them
 * after COMMIT). Errors are ignored: the caller reports the failure that brought it here.
 */
async function abandon(send: Send, dialect: DialectName): Promise<void> {
  await send(ROLLBACK).catch(() => undefined);
  if (dialect === "mysql") {
    await send(RELEASE_LOCKS).catch(() => undefined);
  }
}

/** The servers' COMMIT: on MySQL/MariaDB with the release of the named locks. */
function commitStatement(dialect: DialectName): CompiledQuery {
  return dialect === "mysql" ? COMMIT_AND_RELEASE : COMMIT;
}
