import { hash } from "node:crypto";
import { customerHolds } from "../domain/contact.js";
import type { Customer, IdentifyRequest } from "../domain/contact.js";

/**
 * What a lookup found. `customer` is set on a hit. On a miss, `ticket` (when the index knew a
 * likely customer) lets the caller fill the cache after reading the database, and only if nothing
 * invalidated that customer in between.
 */
export interface CacheLookup {
  readonly customer: Customer | null;
  readonly ticket: FillTicket | null;
  /**
   * On a miss without a ticket: the primary ids (ascending) of the cached customers the index
   * names for the request's identifiers, if each identifier it knows names a live customer
   * (none merged away, none expired) and none of them holds every value of the request. Such a
   * request most likely writes to them (it brings a value they lack, or bridges them), so the
   * service locks them at once instead of reading first. Only a guess: the locked transaction
   * reads again and locks whatever else it finds.
   */
  readonly lead: readonly number[];
  /**
   * The cache's epoch at the lookup. A cache that empties itself when the database changed
   * behind it (the in-process cache on SQLite, when another process commits) starts a new epoch
   * then, and a publication whose lookup is of an earlier epoch creates no entry (see `publish`).
   * Always 0 for the others.
   */
  readonly epoch: number;
}

/** A miss that knows nothing. */
export const MISS: CacheLookup = { customer: null, ticket: null, lead: [], epoch: 0 };

/** The lead of a miss (CacheLookup.lead) from the cached customers its index names. */
export function leadOf(customers: readonly Customer[], request: IdentifyRequest): number[] {
  if (customers.some((customer) => customerHolds(customer, request))) {
    return [];
  }
  return [...new Set(customers.map((customer) => customer.primaryContactId))].sort((a, b) => a - b);
}

/** A customer's generation as seen before a database read; see CustomerCache.fill. */
export interface FillTicket {
  /** The customer's key digest: hex SHA-256 of its primary id. */
  readonly digest: string;
  readonly generation: string;
}

/** Counters of what the cache did, for logs and metrics. */
export interface CacheStats {
  hits: number;
  misses: number;
  fills: number;
  /** Fills refused: the customer was published (or demoted) after the ticket was taken. */
  staleFillsRefused: number;
  /** Customers published by writers (tombstones included). */
  publications: number;
  /** Entries a database read found older than the database, and replaced or made tombstones. */
  repairs: number;
  /** Cache operations that failed or timed out (the request went on without the cache). */
  errors: number;
  /** Debts of failed publications recorded in the database's ledger (Redis: CacheDebtLedger). */
  debtsRecorded: number;
  /** Debts of the ledger this instance paid to Redis, whoever recorded them. */
  debtsPaid: number;
  /**
   * Times the in-process cache emptied itself: another process committed to the database (or
   * the database's version could not be read).
   */
  emptied: number;
}

/**
 * The consolidated-customer cache. Entries live under the hex SHA-256 of the primary id; an index
 * maps the SHA-256 of each identifier key (`email:…`, `phone:…`) to that digest, so no email or
 * phone appears in a key. Every customer has a generation token that changes whenever a writer
 * publishes it.
 *
 * Versions: a customer only grows (every change adds at least one row), so its row count,
 * `1 + secondaryContactIds.length`, orders its states. An entry is never replaced by a lower or
 * equal version, and a merged-away primary gets a tombstone that nothing overwrites.
 *
 * Never stale: writers `publish` after COMMIT and before answering; readers fill only with a
 * ticket taken before their database read, and the fill is refused if the generation moved.
 * No method throws: a failing or slow backend degrades to misses, counted in `stats`.
 */
export interface CustomerCache {
  readonly kind: "redis" | "memory" | "off";
  /**
   * A hit is the cached customer that the index gives for every identifier of the request and
   * that holds every value of it. Anything else is a miss, with a ticket when the index names one
   * customer for all the request's identifiers.
   */
  lookup(request: IdentifyRequest): Promise<CacheLookup>;
  /**
   * Stores `customer` (read from the database after `ticket` was taken) and points the index of
   * the request's identifiers at it, unless the customer's generation is no longer the ticket's.
   * Like `hint`, it also turns a secondary's entry that is still a customer into a tombstone
   * (skipped when the ticket is another customer's, or the backend owes publications or is not
   * connected).
   */
  fill(ticket: FillTicket, customer: Customer, request: IdentifyRequest): Promise<void>;
  /**
   * After a database read that changed nothing: points the index of the request's identifiers at
   * `customer` (as read, committed), and repairs what a writer that committed but never published
   * (it died, or its COMMIT's answer was lost) left behind: the customer's entry, if there is one
   * and it is older, is replaced by `customer`, and the entry of any of its secondaries that is
   * still a customer (a primary that writer merged away) becomes a tombstone. Never creates an
   * entry (that takes a ticket) and never replaces a tombstone.
   */
  hint(request: IdentifyRequest, customer: Customer): Promise<void>;
  /**
   * After a write committed, before answering: stores `customer` (unless a newer version is
   * already there) with a new generation, turns every id of `demotedPrimaryIds` into a tombstone,
   * and points the index of the request's identifiers at the customer. If the backend cannot be
   * reached, the customer's entry is dropped and the tombstones written as soon as it can be, and
   * lookups miss until then.
   *
   * `since` is the lookup the request began with. A cache that emptied itself after it (a new
   * `epoch`) creates no entry for `customer`, whose state may be older than what emptied it; it
   * only replaces an older entry, which it read after emptying.
   */
  publish(
    customer: Customer,
    demotedPrimaryIds: readonly number[],
    request: IdentifyRequest,
    since: CacheLookup,
  ): Promise<void>;
  stats(): CacheStats;
  /** False while the backend cannot be used (Redis unreachable, or a publication owed to it). */
  available(): boolean;
  close(): Promise<void>;
}

/**
 * A publication a cache owes its backend: a floor (no entry of the customer older than `version`
 * may stay or be stored) or a tombstone (a primary merged away).
 */
export type CacheDebt =
  { readonly kind: "floor"; readonly version: number } | { readonly kind: "tombstone" };

/** A debt as the ledger holds it: its row, and the customer (primary id) it is owed for. */
export interface RecordedDebt {
  readonly id: number;
  readonly primaryId: number;
  readonly debt: CacheDebt;
}

/**
 * Debts kept where every instance can read them (the database, migration 0009). A writer whose
 * publication failed records its debts here before it answers; any instance that reaches the
 * shared cache pays them and removes them. So a debt outlives the instance that owed it (it died,
 * or cannot reach the cache while the others can), and paying twice is harmless: a floor only
 * raises, a tombstone stays.
 */
export interface CacheDebtLedger {
  record(debts: readonly (readonly [primaryId: number, debt: CacheDebt])[]): Promise<void>;
  /** The oldest `limit` debts recorded (by row id), paid or not by another instance meanwhile. */
  owed(limit: number): Promise<RecordedDebt[]>;
  /** Removes the rows of debts paid. */
  paid(ids: readonly number[]): Promise<void>;
}

/** The hex SHA-256 of a primary contact id: the cache key of its customer (under the prefix). */
export function customerDigest(primaryId: number): string {
  return hash("sha256", String(primaryId), "hex");
}

export function emptyStats(): CacheStats {
  return {
    hits: 0,
    misses: 0,
    fills: 0,
    staleFillsRefused: 0,
    publications: 0,
    repairs: 0,
    errors: 0,
    debtsRecorded: 0,
    debtsPaid: 0,
    emptied: 0,
  };
}

/** The version of a customer's state: its number of rows. */
export function versionOf(customer: Customer): number {
  return customer.secondaryContactIds.length + 1;
}

/** CACHE=off: every lookup misses, nothing is stored. */
export class NoCache implements CustomerCache {
  readonly kind = "off" as const;
  private readonly counters = emptyStats();

  lookup(): Promise<CacheLookup> {
    this.counters.misses++;
    return Promise.resolve(MISS);
  }

  fill(): Promise<void> {
    return Promise.resolve();
  }

  hint(): Promise<void> {
    return Promise.resolve();
  }

  publish(): Promise<void> {
    return Promise.resolve();
  }

  stats(): CacheStats {
    return { ...this.counters };
  }

  available(): boolean {
    return true;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
