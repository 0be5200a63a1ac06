import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { sql } from "kysely";
import type { Kysely } from "kysely";
import type { Contact, IdentifyRequest } from "../domain/contact.js";
import type { ReconcilePlan } from "../domain/reconcile.js";
import { RetryTransactionError } from "../service/contact-store.js";
import type { ContactStore, ContactTransaction } from "../service/contact-store.js";
import type { Database, DialectName } from "./database.js";
import { DatabaseError } from "./errors.js";
import type { ContactRow, DB } from "./schema.js";

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
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 12,
  baseDelayMs: 4,
  maxDelayMs: 250,
};

export interface ContactStoreHooks {
  /** Called before each retry of a transaction, with the error that caused it. */
  readonly onRetry?: (attempt: number, cause: unknown) => void;
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

function asDatabaseError(error: unknown, doing: string): DatabaseError {
  if (error instanceof DatabaseError) {
    return error;
  }
  const detail = error instanceof Error ? error.message : String(error);
  return new DatabaseError(`${doing}: ${detail}`, { cause: error });
}

/** A lock name derived from an identifier key, so that no email or phone reaches the server. */
function lockDigest(identifierKey: string): string {
  return createHash("sha256").update(identifierKey).digest("hex");
}

/** Deadlocks, serialization failures, lock timeouts and a busy SQLite file are worth a retry. */
export function isRetryable(error: unknown): boolean {
  const cause = error instanceof DatabaseError ? error.cause : error;
  if (cause instanceof RetryTransactionError || cause instanceof LockTimeoutError) {
    return true;
  }
  if (typeof cause !== "object" || cause === null) {
    return false;
  }
  const { code, errno } = cause as { code?: unknown; errno?: unknown };
  if (typeof code === "string") {
    // PostgreSQL: deadlock_detected, serialization_failure, lock_not_available.
    if (code === "40P01" || code === "40001" || code === "55P03") {
      return true;
    }
    if (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED")) {
      return true;
    }
  }
  // MySQL/MariaDB: ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT.
  return errno === 1213 || errno === 1205;
}

class LockTimeoutError extends Error {
  constructor() {
    super("timed out waiting for an identifier lock");
    this.name = "LockTimeoutError";
  }
}

async function findCustomers(db: Kysely<DB>, request: IdentifyRequest): Promise<Contact[]> {
  // Fixed shape: an absent field is bound as NULL, and `column = NULL` matches nothing. Joins (not
  // IN subqueries) so that every planner looks the members up by id and by linkedId through
  // their indexes: MariaDB scanned the table for `linkedId IN (subquery)`.
  const columns = [
    "Contact.id",
    "Contact.email",
    "Contact.phoneNumber",
    "Contact.linkedId",
    "Contact.linkPrecedence",
    "Contact.createdAt",
  ] as const;
  const rows = await db
    .with("matched", (qb) =>
      qb
        .selectFrom("Contact")
        .select(sql<number>`coalesce(${sql.ref("linkedId")}, ${sql.ref("id")})`.as("pid"))
        .distinct()
        .where("deletedAt", "is", null)
        .where((eb) =>
          eb.or([eb("email", "=", request.email), eb("phoneNumber", "=", request.phoneNumber)]),
        ),
    )
    .selectFrom("matched")
    .innerJoin("Contact", "Contact.id", "matched.pid")
    .select(columns)
    .where("Contact.deletedAt", "is", null)
    .union((eb) =>
      eb
        .selectFrom("matched")
        .innerJoin("Contact", "Contact.linkedId", "matched.pid")
        .select(columns)
        .where("Contact.deletedAt", "is", null),
    )
    .execute();
  return rows.map(toContact);
}

class SqlContactTransaction implements ContactTransaction {
  constructor(
    private readonly db: Kysely<DB>,
    private readonly dialect: DialectName,
  ) {}

  async findCustomers(request: IdentifyRequest): Promise<Contact[]> {
    try {
      return await findCustomers(this.db, request);
    } catch (error) {
      throw asDatabaseError(error, "reading customers");
    }
  }

  async lockCustomer(primaryId: number): Promise<void> {
    // SQLite: BEGIN IMMEDIATE already holds the only write lock there is.
    if (this.dialect === "sqlite") {
      return;
    }
    try {
      await this.db
        .selectFrom("Contact")
        .select("id")
        .where("id", "=", primaryId)
        .forUpdate()
        .execute();
    } catch (error) {
      throw asDatabaseError(error, "locking a customer");
    }
  }

  async apply(plan: ReconcilePlan, now: number): Promise<Contact | null> {
    try {
      return await this.write(plan, now);
    } catch (error) {
      throw asDatabaseError(error, "writing a plan");
    }
  }

  private time(ms: number): Date | string {
    return this.dialect === "sqlite" ? new Date(ms).toISOString() : new Date(ms);
  }

  private async write(plan: ReconcilePlan, now: number): Promise<Contact | null> {
    const { winnerId } = plan;
    const updatedAt = this.time(now);
    if (winnerId !== null && plan.promoteWinner) {
      await this.db
        .updateTable("Contact")
        .set({ linkedId: null, linkPrecedence: "primary", updatedAt })
        .where("id", "=", winnerId)
        .execute();
    }
    if (winnerId !== null) {
      for (const group of plan.relinkGroups) {
        await this.db
          .updateTable("Contact")
          .set({ linkedId: winnerId, linkPrecedence: "secondary", updatedAt })
          .where((eb) => eb.or([eb("id", "=", group), eb("linkedId", "=", group)]))
          .where("id", "<>", winnerId)
          .execute();
      }
    }
    const { insert } = plan;
    if (insert === null) {
      return null;
    }
    const createdAt = this.time(insert.createdAt);
    const values = {
      email: insert.email,
      phoneNumber: insert.phoneNumber,
      linkedId: winnerId,
      linkPrecedence: winnerId === null ? ("primary" as const) : ("secondary" as const),
      createdAt,
      updatedAt: createdAt,
    };
    let id: number;
    if (this.dialect === "mysql") {
      const result = await this.db.insertInto("Contact").values(values).executeTakeFirstOrThrow();
      id = Number(result.insertId);
    } else {
      const row = await this.db
        .insertInto("Contact")
        .values(values)
        .returning("id")
        .executeTakeFirstOrThrow();
      id = row.id;
    }
    return {
      id,
      email: values.email,
      phoneNumber: values.phoneNumber,
      linkedId: values.linkedId,
      linkPrecedence: values.linkPrecedence,
      createdAt: insert.createdAt,
    };
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
  constructor(
    private readonly database: Database,
    private readonly retry: RetryPolicy = DEFAULT_RETRY_POLICY,
    private readonly hooks: ContactStoreHooks = {},
  ) {}

  async findCustomers(request: IdentifyRequest): Promise<Contact[]> {
    try {
      return await findCustomers(this.database.db, request);
    } catch (error) {
      throw asDatabaseError(error, "reading customers");
    }
  }

  async withLockedTransaction<T>(
    identifierKeys: readonly string[],
    work: (tx: ContactTransaction) => Promise<T>,
  ): Promise<T> {
    const digests = [...new Set(identifierKeys.map(lockDigest))].sort();
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.runOnce(digests, work);
      } catch (error) {
        if (attempt >= this.retry.maxAttempts || !isRetryable(error)) {
          throw error instanceof RetryTransactionError
            ? asDatabaseError(error, "contention")
            : error;
        }
        this.hooks.onRetry?.(attempt, error instanceof DatabaseError ? error.cause : error);
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
    const { dialect } = this.database;
    return this.database.db.connection().execute(async (conn) => {
      try {
        await sql.raw(dialect === "sqlite" ? "begin immediate" : "begin").execute(conn);
      } catch (error) {
        throw asDatabaseError(error, "beginning a transaction");
      }
      try {
        await this.lockIdentifiers(conn, digests);
        const result = await work(new SqlContactTransaction(conn, dialect));
        try {
          await sql.raw("commit").execute(conn);
        } catch (error) {
          throw asDatabaseError(error, "committing");
        }
        return result;
      } catch (error) {
        await sql
          .raw("rollback")
          .execute(conn)
          .catch(() => undefined);
        throw error;
      } finally {
        if (dialect === "mysql") {
          // Named locks belong to the session, not the transaction: release them after COMMIT.
          await sql`select release_all_locks()`.execute(conn).catch(() => undefined);
        }
      }
    });
  }

  private async lockIdentifiers(conn: Kysely<DB>, digests: readonly string[]): Promise<void> {
    const { dialect, options } = this.database;
    if (dialect === "sqlite" || digests.length === 0) {
      return;
    }
    if (digests.length > 2) {
      throw new Error("a request has at most two identifiers");
    }
    // Always two locks, so that the statement text never depends on the request. Taking the same
    // lock twice is re-entrant in both databases.
    const first = digests[0] ?? "";
    const second = digests[1] ?? first;
    try {
      if (dialect === "postgres") {
        const key = (digest: string) =>
          BigInt.asIntN(64, BigInt(`0x${digest.slice(0, 16)}`)).toString();
        await sql`select pg_advisory_xact_lock(${key(first)}::bigint), pg_advisory_xact_lock(${key(second)}::bigint)`.execute(
          conn,
        );
        return;
      }
      const timeout = Math.max(1, Math.ceil(options.lockTimeoutMs / 1000));
      const name = (digest: string) => `identity:${digest.slice(0, 48)}`;
      const result = await sql<{
        a: number | null;
        b: number | null;
      }>`select get_lock(${name(first)}, ${timeout}) as a, get_lock(${name(second)}, ${timeout}) as b`.execute(
        conn,
      );
      const row = result.rows[0];
      if (row?.a !== 1 || row.b !== 1) {
        throw new LockTimeoutError();
      }
    } catch (error) {
      throw asDatabaseError(error, "locking identifiers");
    }
  }
}
