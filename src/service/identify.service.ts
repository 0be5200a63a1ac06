import type { CacheLookup, CustomerCache } from "../cache/customer-cache.js";
import type { Contact, Customer, IdentifyRequest } from "../domain/contact.js";
import { identifierKeys } from "../domain/contact.js";
import { consolidate, matchedGroups, planIdentify } from "../domain/reconcile.js";
import type { IdentifyOutcome } from "../domain/reconcile.js";
import { RetryTransactionError, StaleCustomerError } from "./contact-store.js";
import type { ContactStore, ContactTransaction } from "./contact-store.js";

export interface IdentifyResult {
  readonly customer: Customer;
  /**
   * The customer as the API's JSON text, when it came ready from the database (SQLite's kept
   * answers); null otherwise. `customer` is then parsed from it when first read.
   */
  readonly json: string | null;
  readonly outcome: IdentifyOutcome;
  /** True when the answer came from the cache without touching the database. */
  readonly cached: boolean;
}

export interface IdentifyServiceOptions {
  readonly clock?: () => number;
  /**
   * Test seam: awaited between the database read and the cache fill of a repeat request, so a
   * test can let a writer commit and publish in that gap.
   */
  readonly beforeCacheFill?: () => Promise<void>;
}

/** Rounds of "lock the customers seen, read again" before the transaction starts over. */
const MAX_LOCK_ROUNDS = 6;

/**
 * Reconciles identify requests against the Contact table, one transaction each, with the cache
 * in front.
 *
 * A request whose email and phone are already in one cached customer is answered from the cache.
 * Otherwise one database read decides: a request that changes nothing is answered from it (and
 * fills the cache, if no writer published that customer meanwhile). Where the store keeps answers
 * (SQLite), that read is of the kept answer; a request that changes nothing but whose customer has
 * no kept answer reads the customer's rows, and one that changes something goes to the
 * transaction with the customers it found. Anything else runs in a locked
 * transaction: the request's identifiers are locked first, so no concurrent request can add a row
 * with them; then the primaries of the customers they match are locked, in ascending id order,
 * and the customers are read again until every customer seen is locked (one found below a locked
 * one starts the attempt over, and so does a locked one that the read shows merged away, before
 * any further lock is awaited). A miss that names cached customers lacking a value of the request
 * (CacheLookup.lead) skips the first read: the transaction locks those customers first, then
 * reads. From then on nobody else can change those
 * customers, so the plan is computed on a stable state. After COMMIT, and before answering, the
 * new state is published to the cache (merged-away primaries become tombstones).
 *
 * Where the store identifies simple requests in one statement (the servers), a write of at most
 * one customer goes there instead of the locked transaction, under the same locks: at once when
 * the cache names one customer lacking a value or nothing at all, else after the read; the store
 * leaves anything else (a merge, a state that moved) to the locked transaction.
 */
export class IdentifyService {
  private readonly clock: () => number;

  constructor(
    private readonly store: ContactStore,
    private readonly cache: CustomerCache,
    private readonly options: IdentifyServiceOptions = {},
  ) {
    this.clock = options.clock ?? Date.now;
  }

  async identify(request: IdentifyRequest): Promise<IdentifyResult> {
    const lookup = await this.cache.lookup(request);
    if (lookup.customer !== null) {
      return { customer: lookup.customer, json: null, outcome: "unchanged", cached: true };
    }

    // With a lead the request most likely writes: no read before the transaction (one round
    // trip fewer), whose first round locks the lead's customers instead.
    let snapshot: Contact[] | null = null;
    let found: readonly number[] = lookup.lead;
    let readRows = lookup.lead.length === 0;
    // The servers: a write that involves at most one customer is one statement. Sent at once
    // when the cache expects such a write: it names one customer lacking a value of the request,
    // or nothing at all (most likely a new customer); otherwise once the read shows one.
    const simple =
      this.store.identifiesSimpleRequests &&
      (lookup.lead.length === 1 ||
        (readRows &&
          lookup.ticket === null &&
          this.cache.kind !== "off" &&
          this.cache.available()));
    if (simple) {
      const result = await this.identifySimple(
        lookup,
        request,
        lookup.lead.length === 1 ? lookup.lead : null,
      );
      if (result !== null) {
        return result;
      }
    }
    if (readRows && this.store.keepsAnswers) {
      // SQLite: the kept answer; else the rows, for a request that changes nothing (a read, no
      // write lock); else the transaction, from the customers found.
      const kept = await this.store.findAnswer(request);
      if (kept.answer !== null) {
        const result = new KeptResult(kept.answer);
        // Parsed only for a cache that stores it (without one nothing reads `customer`).
        if (this.cache.kind !== "off") {
          await this.fillCache(lookup, result.customer, request);
        }
        return result;
      }
      readRows = kept.holds;
      found = kept.customers;
    }
    if (readRows) {
      snapshot = await this.store.findCustomers(request);
      const readOnly = planIdentify(request, snapshot, this.clock());
      if (readOnly.outcome === "unchanged" && readOnly.winnerId !== null) {
        const customer = consolidate(readOnly.winnerId, readOnly.members);
        await this.fillCache(lookup, customer, request);
        return { customer, json: null, outcome: "unchanged", cached: false };
      }
      if (
        !simple &&
        this.store.identifiesSimpleRequests &&
        (readOnly.outcome === "created" || readOnly.outcome === "secondary_added")
      ) {
        const result = await this.identifySimple(
          lookup,
          request,
          readOnly.winnerId === null ? [] : [readOnly.winnerId],
        );
        if (result !== null) {
          return result;
        }
      }
    }

    // Customers are locked in ascending id order in every transaction, so no two transactions
    // deadlock on them: a customer found only after a higher one was locked starts the attempt
    // over (a retry), which then locks every customer seen so far in order.
    const seen = new Set(snapshot === null ? found : matchedGroups(request, snapshot));
    const { customer, plan } = await this.store.withLockedTransaction(
      identifierKeys(request),
      async (tx) => {
        let rows: Contact[];
        try {
          rows = await this.lockCustomers(tx, seen, request);
        } catch (error) {
          if (error instanceof StaleCustomerError) {
            for (const id of error.customerIds) {
              seen.delete(id);
            }
          }
          throw error;
        }
        const now = this.clock();
        const plan = planIdentify(request, rows, now);
        return { customer: await tx.commit(plan, now, request), plan };
      },
    );
    if (plan.outcome === "unchanged") {
      await this.cache.hint(request, customer);
    } else {
      await this.cache.publish(customer, plan.relinkGroups, request, lookup);
    }
    return { customer, json: null, outcome: plan.outcome, cached: false };
  }

  /**
   * Locks the customers of `seen` in ascending id order and reads the request's customers, then
   * locks any more the read finds (adding them to `seen`), until a read finds none: its rows.
   */
  private async lockCustomers(
    tx: ContactTransaction,
    seen: Set<number>,
    request: IdentifyRequest,
  ): Promise<Contact[]> {
    let highest = -Infinity;
    let toLock = [...seen].sort((a, b) => a - b);
    for (let round = 0; ; round++) {
      if (round >= MAX_LOCK_ROUNDS) {
        throw new RetryTransactionError("customers kept changing while being locked");
      }
      const rows = await tx.lockAndFind(toLock, request);
      highest = Math.max(highest, ...toLock);
      const locked = toLock;
      toLock = matchedGroups(request, rows).filter((id) => !seen.has(id));
      if (toLock.length === 0) {
        return rows;
      }
      for (const id of toLock) {
        seen.add(id);
      }
      if (tx.locksCustomers) {
        // A customer just locked that the read no longer shows as a customer was merged away;
        // its lock may still be held (PostgreSQL keeps the lock of a row that changed while the
        // statement waited for it). Its row is now a secondary that the holder of its new
        // customer relinks, so waiting for another customer while holding it could deadlock:
        // start over without it.
        const stale = locked.filter((id) => !isCustomer(rows, id));
        if (stale.length > 0) {
          throw new StaleCustomerError(stale);
        }
        if ((toLock[0] ?? Infinity) < highest) {
          throw new RetryTransactionError("a customer was found out of lock order");
        }
      }
    }
  }

  /**
   * The request reconciled in one statement (ContactStore.identifySimple), published to the
   * cache as a locked transaction's result would be; null if the store left it to that
   * transaction.
   */
  private async identifySimple(
    lookup: CacheLookup,
    request: IdentifyRequest,
    expected: readonly number[] | null,
  ): Promise<IdentifyResult | null> {
    const simple = await this.store.identifySimple(request, this.clock(), expected);
    if (simple === null) {
      return null;
    }
    const customer = consolidate(simple.primaryId, simple.rows);
    if (simple.outcome === "unchanged") {
      await this.fillCache(lookup, customer, request);
    } else {
      await this.cache.publish(customer, [], request, lookup);
    }
    return { customer, json: null, outcome: simple.outcome, cached: false };
  }

  /** After a read that changed nothing: fills the cache (with a ticket) or hints it. */
  private async fillCache(
    lookup: CacheLookup,
    customer: Customer,
    request: IdentifyRequest,
  ): Promise<void> {
    if (lookup.ticket !== null) {
      await this.options.beforeCacheFill?.();
      await this.cache.fill(lookup.ticket, customer, request);
    } else {
      await this.cache.hint(request, customer);
    }
  }
}

/**
 * True when some row of `rows` belongs to the customer whose primary is `id` (a primary that is
 * soft-deleted still is one, through its live rows); false once that customer was merged away.
 */
function isCustomer(rows: readonly Contact[], id: number): boolean {
  return rows.some((row) => (row.linkedId ?? row.id) === id);
}

/**
 * A repeat answered from its kept JSON text; the customer is parsed only if someone asks. A class,
 * not an object literal with a getter: V8 kept those alive past two scavenges (promoted about
 * 200 bytes of every repeat to the old generation, 20 MB more RSS under load).
 */
class KeptResult implements IdentifyResult {
  readonly outcome = "unchanged";
  readonly cached = false;
  private parsed: Customer | null = null;

  constructor(readonly json: string) {}

  get customer(): Customer {
    this.parsed ??= JSON.parse(this.json) as Customer;
    return this.parsed;
  }
}
