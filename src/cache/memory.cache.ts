import { randomUUID } from "node:crypto";
import { LRUCache } from "lru-cache";
import type { Customer, IdentifyRequest } from "../domain/contact.js";
import { customerHolds, identifierKeys } from "../domain/contact.js";
import { customerDigest, emptyStats, identifierDigest } from "./customer-cache.js";
import type { CacheLookup, CacheStats, CustomerCache, FillTicket } from "./customer-cache.js";

export interface MemoryCacheOptions {
  readonly ttlSeconds: number;
  /** Entries of all kinds (customers, index, generations) kept at most; least recently used go. */
  readonly maxEntries: number;
}

/**
 * The cache in this process's memory, with the same keys and rules as the Redis one. Coherent
 * within one process only: with several processes, use Redis (or CACHE=off).
 */
export class MemoryCustomerCache implements CustomerCache {
  readonly kind = "memory" as const;
  private readonly entries: LRUCache<string, string>;
  private readonly counters = emptyStats();
  private readonly ttlMs: number;

  constructor(options: MemoryCacheOptions) {
    this.ttlMs = options.ttlSeconds * 1000;
    this.entries = new LRUCache<string, string>({ max: options.maxEntries, ttl: this.ttlMs });
  }

  lookup(request: IdentifyRequest): Promise<CacheLookup> {
    const digest = this.indexedDigest(request);
    if (digest === null) {
      this.counters.misses++;
      return Promise.resolve({ customer: null, ticket: null });
    }
    const cached = this.entries.get(`c:${digest}`);
    if (cached !== undefined) {
      const customer = JSON.parse(cached) as Customer;
      if (customerHolds(customer, request)) {
        this.counters.hits++;
        return Promise.resolve({ customer, ticket: null });
      }
    }
    this.counters.misses++;
    let generation = this.entries.get(`g:${digest}`);
    if (generation === undefined) {
      generation = randomUUID();
      this.entries.set(`g:${digest}`, generation, { ttl: this.ttlMs * 2 });
    }
    return Promise.resolve({ customer: null, ticket: { digest, generation } });
  }

  fill(ticket: FillTicket, customer: Customer, request: IdentifyRequest): Promise<void> {
    const digest = customerDigest(customer.primaryContactId);
    if (digest !== ticket.digest || this.entries.get(`g:${digest}`) !== ticket.generation) {
      this.counters.staleFillsRefused++;
      return Promise.resolve();
    }
    this.entries.set(`c:${digest}`, JSON.stringify(customer));
    this.entries.set(`g:${digest}`, ticket.generation, { ttl: this.ttlMs * 2 });
    this.index(request, digest);
    this.counters.fills++;
    return Promise.resolve();
  }

  hint(request: IdentifyRequest, primaryId: number): Promise<void> {
    this.index(request, customerDigest(primaryId));
    return Promise.resolve();
  }

  invalidate(
    changedPrimaryIds: readonly number[],
    request: IdentifyRequest,
    primaryId: number,
  ): Promise<void> {
    for (const id of changedPrimaryIds) {
      const digest = customerDigest(id);
      this.entries.delete(`c:${digest}`);
      this.entries.set(`g:${digest}`, randomUUID(), { ttl: this.ttlMs * 2 });
      this.counters.invalidations++;
    }
    this.index(request, customerDigest(primaryId));
    return Promise.resolve();
  }

  stats(): CacheStats {
    return { ...this.counters };
  }

  close(): Promise<void> {
    this.entries.clear();
    return Promise.resolve();
  }

  private index(request: IdentifyRequest, digest: string): void {
    for (const key of identifierKeys(request)) {
      this.entries.set(`i:${identifierDigest(key)}`, digest);
    }
  }

  /** The digest every identifier of the request is indexed under, or null. */
  private indexedDigest(request: IdentifyRequest): string | null {
    let digest: string | null = null;
    for (const key of identifierKeys(request)) {
      const found = this.entries.get(`i:${identifierDigest(key)}`);
      if (found === undefined || (digest !== null && found !== digest)) {
        return null;
      }
      digest = found;
    }
    return digest;
  }
}
