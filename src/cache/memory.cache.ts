import { LRUCache } from "lru-cache";
import type { Customer, IdentifyRequest } from "../domain/contact.js";
import { customerHolds } from "../domain/contact.js";
import { endOfTurn } from "../end-of-turn.js";
import { customerDigest, emptyStats, leadOf, MISS, versionOf } from "./customer-cache.js";
import type { CacheLookup, CacheStats, CustomerCache, FillTicket } from "./customer-cache.js";

export interface MemoryCacheOptions {
  readonly ttlSeconds: number;
  /**
   * Customers kept at most, the least recently used going first; the index keeps at most
   * INDEX_PER_CUSTOMER times as many emails, and as many phone numbers.
   */
  readonly maxEntries: number;
  /**
   * A number that moves whenever another process has committed to the database (SQLite's
   * `PRAGMA data_version`). With it the cache is coherent with writers in other processes: see
   * `MemoryCustomerCache`. Without it, coherent within this process only.
   */
  readonly databaseVersion?: () => number;
}

/**
 * What the cache knows of one primary id: its entry (the customer, a tombstone once merged away,
 * or nothing yet) and its generation, which every publication and tombstone replaces.
 */
interface Slot {
  readonly entry: Customer | typeof DEMOTED | null;
  readonly generation: number;
}

const DEMOTED = "demoted";

/**
 * Index entries per kept customer (emails, and phone numbers, each). A lookup hits only when every
 * identifier of the request is indexed: with as many index entries as customers, a customer with
 * two emails and a phone would be missed as soon as the cache is full (an earlier bound cut the
 * hits from 51% to 9% of the requests).
 */
const INDEX_PER_CUSTOMER = 3;

/**
 * The customer as kept: arrays of their exact length. Built with push, an array has room for 16
 * elements or more, 150 bytes where a customer's secondaries are kept.
 */
function kept(customer: Customer): Customer {
  return {
    primaryContactId: customer.primaryContactId,
    emails: customer.emails.slice(),
    phoneNumbers: customer.phoneNumbers.slice(),
    secondaryContactIds: customer.secondaryContactIds.slice(),
  };
}

/**
 * The primary id that the index names for every identifier of a request (as read by `find`), or
 * null when it does not know one of them or names two customers.
 */
function oneCustomer(
  byEmail: number | null | undefined,
  byPhone: number | null | undefined,
): number | null {
  if (byEmail === undefined || byPhone === undefined) {
    return null;
  }
  if (byEmail !== null && byPhone !== null && byEmail !== byPhone) {
    return null;
  }
  return byEmail ?? byPhone;
}

/** True when `customer` may take the place of `current`: no tombstone, no equal or newer version. */
function replaces(customer: Customer, current: Slot["entry"]): boolean {
  return current === null || (current !== DEMOTED && versionOf(current) < versionOf(customer));
}

/**
 * The cache in this process's memory, with the same rules as the Redis one. Without
 * `databaseVersion`, coherent within one process only: with several processes, use Redis (or
 * CACHE=off).
 *
 * With `databaseVersion` (SQLite), another process's commits empty it. Lookups are answered at
 * the end of the turn of the event loop in which they were made; before answering them, the
 * cache reads the version once for the whole turn. If it moved since the last reading, another
 * process committed: the cache empties itself and starts a new epoch, and the turn's lookups
 * answer misses. A write acknowledged to a client before it sent a request committed before that
 * request was read, so before the version read that guards its answer. Whatever the cache holds
 * at an unchanged reading is as new as the database: an entry can only come from a fill (its
 * ticket dies with an emptying), or from a publication, which creates none if the cache was
 * emptied since the request's lookup (`publish`'s `since`), so no state older than an emptying
 * survives it. Such a publication still replaces an older entry: that entry was read after the
 * emptying, and the publication's newer version was committed after that read. Another process's
 * commit that lands after a fill or publication moves the version before the next answer.
 *
 * Nothing leaves the process, so it needs none of the Redis cache's digests: customers are kept
 * under their primary id, with the generation beside the entry, and the index maps each email
 * and each phone number itself to the primary id (hashing two identifiers was most of a cache
 * hit's own cost), under the customer's own string where it holds it, so that the index costs no
 * copy of it. Generations count up from 1: nothing can bring an old one back, since the
 * counter and the cache live and die with the process. Only a ticket carries the customer's
 * digest, as the contract says.
 */
export class MemoryCustomerCache implements CustomerCache {
  readonly kind = "memory" as const;
  private readonly customers: LRUCache<number, Slot>;
  private readonly emails: LRUCache<string, number>;
  private readonly phones: LRUCache<string, number>;
  private readonly counters = emptyStats();
  private lastGeneration = 0;
  private readonly databaseVersion: (() => number) | null;
  /** The database's version at the last reading (null: unknown, the next reading empties). */
  private lastVersion: number | null;
  private epoch = 0;
  /** This turn's version reading, which the turn's lookups wait for; null outside a turn. */
  private turnChecked: Promise<void> | null = null;

  constructor(options: MemoryCacheOptions) {
    const ttl = options.ttlSeconds * 1000;
    this.customers = new LRUCache<number, Slot>({ max: options.maxEntries, ttl });
    const indexed = options.maxEntries * INDEX_PER_CUSTOMER;
    this.emails = new LRUCache<string, number>({ max: indexed, ttl });
    this.phones = new LRUCache<string, number>({ max: indexed, ttl });
    this.databaseVersion = options.databaseVersion ?? null;
    this.lastVersion = this.readVersion();
  }

  /**
   * Answered at the end of this turn of the event loop, with every other lookup of the turn
   * (endOfTurn): answering at once cost the server more CPU per request than the lookup itself.
   * With `databaseVersion`, after the turn's reading of it (see the class comment).
   */
  async lookup(request: IdentifyRequest): Promise<CacheLookup> {
    const found = this.find(request);
    const epoch = this.epoch;
    await this.endOfTurnChecked();
    if (this.epoch !== epoch) {
      this.counters.misses++;
      return { ...MISS, epoch: this.epoch };
    }
    if (found.customer === null) {
      this.counters.misses++;
    } else {
      this.counters.hits++;
    }
    return found;
  }

  private endOfTurnChecked(): Promise<void> {
    if (this.databaseVersion === null) {
      return endOfTurn();
    }
    return (this.turnChecked ??= endOfTurn().then(() => {
      this.turnChecked = null;
      const version = this.readVersion();
      if (version === null || version !== this.lastVersion) {
        this.empty();
      }
      this.lastVersion = version;
    }));
  }

  /** The database's version now; null if there is none or it cannot be read (closed). */
  private readVersion(): number | null {
    try {
      return this.databaseVersion?.() ?? null;
    } catch {
      return null;
    }
  }

  /** Drops every entry and index key; tickets and lookups of the old epoch are refused. */
  private empty(): void {
    this.clear();
    this.epoch++;
    this.counters.emptied++;
  }

  private clear(): void {
    this.customers.clear();
    this.emails.clear();
    this.phones.clear();
  }

  private find(request: IdentifyRequest): CacheLookup {
    // What the index names for each identifier: null for one the request lacks, undefined for
    // one it does not know. Read once for both the hit and, on a miss, the lead.
    const byEmail = request.email === null ? null : this.emails.get(request.email);
    const byPhone = request.phoneNumber === null ? null : this.phones.get(request.phoneNumber);
    const primaryId = oneCustomer(byEmail, byPhone);
    if (primaryId === null) {
      return { ...MISS, lead: this.lead([byEmail, byPhone], request), epoch: this.epoch };
    }
    let slot = this.customers.get(primaryId);
    const entry = slot?.entry ?? null;
    if (entry !== null && entry !== DEMOTED && customerHolds(entry, request)) {
      return { customer: entry, ticket: null, lead: [], epoch: this.epoch };
    }
    if (entry === DEMOTED) {
      return { ...MISS, epoch: this.epoch };
    }
    if (slot === undefined) {
      slot = { entry: null, generation: this.nextGeneration() };
      this.customers.set(primaryId, slot);
    }
    const ticket = { digest: customerDigest(primaryId), generation: String(slot.generation) };
    return { customer: null, ticket, lead: [], epoch: this.epoch };
  }

  /**
   * CacheLookup.lead: the cached customers the index names for the request, if each is a live
   * customer (one gone or merged away would leave the lead short of a customer the request
   * reaches, which the transaction would then lock out of order).
   */
  private lead(named: readonly (number | null | undefined)[], request: IdentifyRequest): number[] {
    const customers: Customer[] = [];
    for (const primaryId of named) {
      if (primaryId === null || primaryId === undefined) {
        continue;
      }
      const entry = this.customers.get(primaryId)?.entry ?? null;
      if (entry === null || entry === DEMOTED) {
        return [];
      }
      customers.push(entry);
    }
    return leadOf(customers, request);
  }

  fill(ticket: FillTicket, customer: Customer, request: IdentifyRequest): Promise<void> {
    const primaryId = customer.primaryContactId;
    if (customerDigest(primaryId) !== ticket.digest) {
      this.counters.staleFillsRefused++;
      return Promise.resolve();
    }
    this.demoteSecondaries(customer);
    const slot = this.customers.get(primaryId);
    if (slot === undefined || String(slot.generation) !== ticket.generation) {
      this.counters.staleFillsRefused++;
      return Promise.resolve();
    }
    if (replaces(customer, slot.entry)) {
      this.customers.set(primaryId, { entry: kept(customer), generation: slot.generation });
      this.point(request, customer);
      this.counters.fills++;
    } else {
      this.counters.staleFillsRefused++;
    }
    return Promise.resolve();
  }

  hint(request: IdentifyRequest, customer: Customer): Promise<void> {
    const primaryId = customer.primaryContactId;
    this.point(request, customer);
    const slot = this.customers.get(primaryId);
    if (slot !== undefined && slot.entry !== null && replaces(customer, slot.entry)) {
      this.customers.set(primaryId, { entry: kept(customer), generation: slot.generation });
      this.counters.repairs++;
    }
    this.demoteSecondaries(customer);
    return Promise.resolve();
  }

  /**
   * An entry under one of the customer's secondaries that is still a customer was left by a
   * writer that merged it away and never published: it becomes a tombstone.
   */
  private demoteSecondaries(customer: Customer): void {
    for (const id of customer.secondaryContactIds) {
      const entry = this.customers.peek(id)?.entry ?? null;
      if (entry !== null && entry !== DEMOTED) {
        this.tombstone(id);
        this.counters.repairs++;
      }
    }
  }

  /** A merged-away primary's entry: a tombstone, with a new generation. */
  private tombstone(primaryId: number): void {
    this.customers.set(primaryId, { entry: DEMOTED, generation: this.nextGeneration() });
  }

  publish(
    customer: Customer,
    demotedPrimaryIds: readonly number[],
    request: IdentifyRequest,
    since: CacheLookup,
  ): Promise<void> {
    const primaryId = customer.primaryContactId;
    // An equal or newer version (or a tombstone) stays, under the new generation. Emptied since
    // the lookup, the customer may be older than what emptied it: it creates no entry, and only
    // replaces one (as hint does), which was read after the emptying and is older than it.
    const current = this.customers.get(primaryId)?.entry ?? null;
    const stores = since.epoch === this.epoch || current !== null;
    const entry = stores && replaces(customer, current) ? kept(customer) : current;
    this.customers.set(primaryId, { entry, generation: this.nextGeneration() });
    for (const id of demotedPrimaryIds) {
      this.tombstone(id);
    }
    this.point(request, customer);
    this.counters.publications += 1 + demotedPrimaryIds.length;
    return Promise.resolve();
  }

  stats(): CacheStats {
    return { ...this.counters };
  }

  available(): boolean {
    return true;
  }

  close(): Promise<void> {
    this.clear();
    return Promise.resolve();
  }

  private nextGeneration(): number {
    return ++this.lastGeneration;
  }

  /**
   * Points the index of the request's identifiers at the customer, under the customer's own
   * strings where it holds them.
   */
  private point(request: IdentifyRequest, customer: Customer): void {
    const { email, phoneNumber } = request;
    if (email !== null) {
      const key = customer.emails.find((own) => own === email) ?? email;
      this.emails.set(key, customer.primaryContactId);
    }
    if (phoneNumber !== null) {
      const key = customer.phoneNumbers.find((own) => own === phoneNumber) ?? phoneNumber;
      this.phones.set(key, customer.primaryContactId);
    }
  }
}
