import type { Contact, Customer, IdentifyRequest } from "../domain/contact.js";
import type { ReconcilePlan } from "../domain/reconcile.js";

/** Reads that may run inside or outside a transaction. */
export interface ContactReader {
  /**
   * The live rows of every customer that has a live row whose email equals the request's email
   * or whose phone equals the request's phone (an absent field matches nothing). One statement,
   * so the rows come from one committed snapshot.
   */
  findCustomers(request: IdentifyRequest): Promise<Contact[]>;
}

/**
 * The operations available inside a locked write transaction. Where the database allows
 * (PostgreSQL), statements that need no answer of another share a round trip: BEGIN, the
 * identifier locks and the first `lockAndFind`; a plan's writes and COMMIT.
 */
export interface ContactTransaction {
  /**
   * False where one writer holds the whole database (SQLite): no customer is locked, so the
   * order of `lockAndFind` calls does not matter.
   */
  readonly locksCustomers: boolean;
  /**
   * Locks the rows of `primaryIds` until the transaction ends, then reads the customers of
   * `request` (as ContactReader.findCustomers), seeing every change committed before the locks
   * were granted. Every change to a customer (a new secondary, a demotion, a relink) happens
   * under the lock of its primary.
   */
  lockAndFind(primaryIds: readonly number[], request: IdentifyRequest): Promise<Contact[]>;
  /**
   * Writes the plan of `request` (a merge is logged with the request's identifiers; where the
   * store keeps answers, the resulting customer's answer too) and ends the transaction: the
   * work's last call. Returns the resulting customer (the plan's members and the inserted row,
   * consolidated) once the writes are committed (SQLite: once they are in the batch that commits).
   */
  commit(plan: ReconcilePlan, now: number, request: IdentifyRequest): Promise<Customer>;
}

/** What the kept answers (SQLite) say about a request: see ContactStore.findAnswer. */
export interface AnswerLookup {
  /** True when one customer already holds every value of the request (it changes nothing). */
  readonly holds: boolean;
  /** That customer's answer (the API's JSON text), if `holds` and its answer is kept; else null. */
  readonly answer: string | null;
  /**
   * Customers (primary ids, ascending) with a live row matching the request: the lowest and the
   * highest of them, so all of them when there are at most two.
   */
  readonly customers: readonly number[];
}

/** What ContactStore.identifySimple did, and the customer it left. */
export interface SimpleIdentify {
  readonly outcome: "created" | "secondary_added" | "unchanged";
  /** The customer's primary id. */
  readonly primaryId: number;
  /** The customer's live rows, the inserted one included. */
  readonly rows: readonly Contact[];
}

/** The Contact table. Implementations must hold across processes, not only within one. */
export interface ContactStore extends ContactReader {
  /**
   * True where the store keeps each customer's answer ready (SQLite): `findAnswer` may be used,
   * and every write transaction keeps the answer of the customer it leaves.
   */
  readonly keepsAnswers: boolean;
  /**
   * One read of the indexes and the kept answers, before `findCustomers`: a request that changes
   * nothing is answered from it when its customer's answer is kept, and one that changes
   * something goes to its transaction without reading the rows first. Only where `keepsAnswers`.
   */
  findAnswer(request: IdentifyRequest): Promise<AnswerLookup>;
  /**
   * True where the database reconciles a request that involves at most one customer in one
   * statement (`identity_identify`: PostgreSQL's function, migration 0006; MySQL/MariaDB's
   * procedure, migration 0007): `identifySimple` may be used.
   */
  readonly identifiesSimpleRequests: boolean;
  /**
   * Reconciles `request` in one statement, its own transaction, when it matches no customer or
   * one whose primary is live: creates a customer, adds a secondary, or reads the customer
   * unchanged (without locks), taking for a write the locks a locked transaction takes. Null,
   * having written nothing, for anything else (a merge, a soft-deleted primary, a state that
   * moved under its locks, a lock that timed out): the caller goes on as without it. `now` is
   * the creation time of a row it inserts (a secondary's is never older than its customer's
   * newest row). `expected`, when known, is the request's customer as the caller saw it (its
   * primary id; none: empty): the servers' statements then lock first and read only under the
   * locks (migrations 0007 and 0008), and a write found there for another customer than the one
   * expected leaves the request to the caller (a customer that already holds the request's
   * values is answered).
   * Only where `identifiesSimpleRequests`.
   */
  identifySimple(
    request: IdentifyRequest,
    now: number,
    expected?: readonly number[] | null,
  ): Promise<SimpleIdentify | null>;
  /**
   * Runs `work` in one transaction that first holds an exclusive lock on each identifier key
   * (taken in a global order, so no two transactions deadlock on them), committing when it
   * resolves. Deadlocks, serialization failures and lock timeouts are retried (bounded, with
   * jitter) by running `work` again from the start; anything else rolls back and rejects.
   */
  withLockedTransaction<T>(
    identifierKeys: readonly string[],
    work: (tx: ContactTransaction) => Promise<T>,
  ): Promise<T>;
}

/**
 * Thrown inside `withLockedTransaction` work when the locked state kept moving (a bounded number
 * of rounds did not settle): the store rolls back and runs the work again, like a deadlock.
 */
export class RetryTransactionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RetryTransactionError";
  }
}

/**
 * Thrown inside a locked transaction when customers it locked turned out to be merged away (their
 * lock found no live primary, or the read after it no longer shows them) while another lock was
 * still to be taken: PostgreSQL keeps the lock of a row that changed while the statement waited
 * for it, so the transaction must not wait for another customer while it may hold that row. The
 * work drops those customers and starts over.
 */
export class StaleCustomerError extends RetryTransactionError {
  constructor(readonly customerIds: readonly number[]) {
    super(`customers ${customerIds.join(", ")} were merged away while being locked`);
    this.name = "StaleCustomerError";
  }
}
