import { randomUUID } from "node:crypto";
import { LRUCache } from "lru-cache";
import type { Customer, IdentifyRequest } from "../domain/contact.js";
import { customerHolds, identifierKeys } from "../domain/contact.js";
import { endOfTurn } from "../end-of-turn.js";
import { customerDigest, emptyStats, leadOf, MISS, versionOf } from "./customer-cache.js";
import type { CacheLookup, CacheStats, CustomerCache, FillTicket } from "./customer-cache.js";

export interface MemoryCacheOptions {
  readonly ttlSeconds: number;
  /** Entries of all kinds (customers, index, generations) kept at most; least recently used go. */
  readonly maxEntries: number;
}

type Entry = { readonly customer: Customer } | { readonly demoted: true };

/**
 * The cache in this process's memory, with the same rules as the Redis one. Coherent within one
 * process only: with several processes, use Redis (or CACHE=off). The index is keyed by the
 * identifier itself, not its SHA-256 as in Redis: nothing leaves the process, and hashing two
 * identifiers was most of a cache hit's own cost.
 */
export class MemoryCustomerCache implements CustomerCache {
  readonly kind = "memory" as const;
  private readonly entries: LRUCache<string, Entry>;
  private readonly tokens: LRUCache<string, string>;
  private readonly counters = emptyStats();
  private readonly ttlMs: number;

  constructor(options: MemoryCacheOptions) {
    this.ttlMs = options.ttlSeconds * 1000;
    this.entries = new LRUCache<string, Entry>({ max: options.maxEntries, ttl: this.ttlMs });
    this.tokens = new LRUCache<string, string>({ max: options.maxEntries, ttl: this.ttlMs });
  }

  /**
   * Answered at the end of this turn of the event loop, with every other lookup of the turn
   * (endOfTurn): answering at once cost the server more CPU per request than the lookup itself.
   */
  async lookup(request: IdentifyRequest): Promise<CacheLookup> {
    const found = this.find(request);
    await endOfTurn();
    return found;
  }

  private find(request: IdentifyRequest): CacheLookup {
    const digest = this.indexedDigest(request);
    if (digest === null) {
      this.counters.misses++;
      return { ...MISS, lead: this.lead(request) };
    }
    const entry = this.entries.get(`c:${digest}`);
    if (entry !== undefined && "customer" in entry && customerHolds(entry.customer, request)) {
      this.counters.hits++;
      return { customer: entry.customer, ticket: null, lead: [] };
    }
    this.counters.misses++;
    if (entry !== undefined && "demoted" in entry) {
      return MISS;
    }
    let generation = this.tokens.get(`g:${digest}`);
    if (generation === undefined) {
      generation = randomUUID();
      this.tokens.set(`g:${digest}`, generation, { ttl: this.ttlMs * 2 });
    }
    return { customer: null, ticket: { digest, generation }, lead: [] };
  }

  /**
   * CacheLookup.lead: the cached customers the index names for the request, if each is a live
   * customer (one gone or merged away would leave the lead short of a customer the request
   * reaches, which the transaction would then lock out of order).
   */
  private lead(request: IdentifyRequest): number[] {
    const customers: Customer[] = [];
    for (const key of identifierKeys(request)) {
      const digest = this.tokens.get(`i:${key}`);
      if (digest === undefined) {
        continue;
      }
      const entry = this.entries.get(`c:${digest}`);
      if (entry === undefined || !("customer" in entry)) {
        return [];
      }
      customers.push(entry.customer);
    }
    return leadOf(customers, request);
  }

  fill(ticket: FillTicket, customer: Customer, request: IdentifyRequest): Promise<void> {
    const digest = customerDigest(customer.primaryContactId);
    if (digest !== ticket.digest) {
      this.counters.staleFillsRefused++;
      return Promise.resolve();
    }
    this.demoteSecondaries(customer);
    if (this.tokens.get(`g:${digest}`) !== ticket.generation) {
      this.counters.staleFillsRefused++;
      return Promise.resolve();
    }
    if (this.store(digest, customer)) {
      this.tokens.set(`g:${digest}`, ticket.generation, { ttl: this.ttlMs * 2 });
      this.index(request, digest);
      this.counters.fills++;
    } else {
      this.counters.staleFillsRefused++;
    }
    return Promise.resolve();
  }

  hint(request: IdentifyRequest, customer: Customer): Promise<void> {
    const digest = customerDigest(customer.primaryContactId);
    this.index(request, digest);
    const current = this.entries.get(`c:${digest}`);
    if (current !== undefined && this.store(digest, customer)) {
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
      const demoted = customerDigest(id);
      const entry = this.entries.get(`c:${demoted}`);
      if (entry !== undefined && "customer" in entry) {
        this.tombstone(demoted);
        this.counters.repairs++;
      }
    }
  }

  /** A merged-away primary's entry: a tombstone, with a new generation. */
  private tombstone(digest: string): void {
    this.entries.set(`c:${digest}`, { demoted: true });
    this.tokens.set(`g:${digest}`, randomUUID(), { ttl: this.ttlMs * 2 });
  }

  publish(
    customer: Customer,
    demotedPrimaryIds: readonly number[],
    request: IdentifyRequest,
  ): Promise<void> {
    const digest = customerDigest(customer.primaryContactId);
    this.tokens.set(`g:${digest}`, randomUUID(), { ttl: this.ttlMs * 2 });
    this.store(digest, customer);
    for (const id of demotedPrimaryIds) {
      this.tombstone(customerDigest(id));
    }
    this.index(request, digest);
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
    this.entries.clear();
    this.tokens.clear();
    return Promise.resolve();
  }

  /** Stores the customer unless a tombstone or an equal or newer version is there. */
  private store(digest: string, customer: Customer): boolean {
    const current = this.entries.get(`c:${digest}`);
    if (
      current !== undefined &&
      ("demoted" in current || versionOf(current.customer) >= versionOf(customer))
    ) {
      return false;
    }
    this.entries.set(`c:${digest}`, { customer });
    return true;
  }

  private index(request: IdentifyRequest, digest: string): void {
    for (const key of identifierKeys(request)) {
      this.tokens.set(`i:${key}`, digest);
    }
  }

  /** The digest every identifier of the request is indexed under, or null. */
  private indexedDigest(request: IdentifyRequest): string | null {
    let digest: string | null = null;
    for (const key of identifierKeys(request)) {
      const found = this.tokens.get(`i:${key}`);
      if (found === undefined || (digest !== null && found !== digest)) {
        return null;
      }
      digest = found;
    }
    return digest;
  }
}
