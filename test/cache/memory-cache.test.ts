import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MISS } from "../../src/cache/customer-cache.js";
import { MemoryCustomerCache } from "../../src/cache/memory.cache.js";
import type { Customer } from "../../src/domain/contact.js";
import { freshCustomer } from "../support/customers.js";

/**
 * The in-process cache as SQLite runs it: `databaseVersion` stands for SQLite's data_version,
 * which moves when another process commits. Two processes on one file, end to end:
 * test/concurrency/cache-staleness.test.ts.
 */
describe("in-process cache with a database version", () => {
  /** A cache whose database version is `version.now`; `version.reads` counts its readings. */
  function open(): { cache: MemoryCustomerCache; version: { now: number; reads: number } } {
    const version = { now: 1, reads: 0 };
    const cache = new MemoryCustomerCache({
      ttlSeconds: 3600,
      maxEntries: 1000,
      databaseVersion: () => {
        version.reads++;
        return version.now;
      },
    });
    return { cache, version };
  }

  it("answers from its entries while the version stays, and empties itself when it moves", async () => {
    const { cache, version } = open();
    const { request, customer } = freshCustomer();
    await cache.publish(customer, [], request, MISS);
    assert.deepEqual(await cache.lookup(request), { customer, ticket: null, lead: [], epoch: 0 });
    version.now++;
    // The index went too: no ticket, and the next lookup knows nothing either.
    assert.deepEqual(await cache.lookup(request), { ...MISS, epoch: 1 });
    assert.deepEqual(await cache.lookup(request), { ...MISS, epoch: 1 });
    const { hits, misses, emptied } = cache.stats();
    assert.deepEqual({ hits, misses, emptied }, { hits: 1, misses: 2, emptied: 1 });
  });

  it("reads the version after the lookup, at the end of its turn, before answering", async () => {
    const { cache, version } = open();
    const { request, customer } = freshCustomer();
    await cache.publish(customer, [], request, MISS);
    const lookup = cache.lookup(request);
    // Another process commits after the request was read, before its answer goes out.
    version.now++;
    assert.deepEqual(await lookup, { ...MISS, epoch: 1 });
  });

  it("reads the version once for all the lookups of a turn", async () => {
    const { cache, version } = open();
    const before = version.reads;
    const requests = [freshCustomer(), freshCustomer(), freshCustomer()].map(
      ({ request }) => request,
    );
    await Promise.all(requests.map((request) => cache.lookup(request)));
    assert.equal(version.reads - before, 1);
    await Promise.all(requests.map((request) => cache.lookup(request)));
    assert.equal(version.reads - before, 2);
  });

  it("refuses a fill whose ticket was taken before the version moved", async () => {
    const { cache, version } = open();
    const { request, customer } = freshCustomer();
    await cache.hint(request, customer);
    const { ticket } = await cache.lookup(request);
    assert.ok(ticket);
    version.now++;
    await cache.lookup(freshCustomer().request); // the turn that notices, and empties
    await cache.fill(ticket, customer, request);
    assert.equal(cache.stats().staleFillsRefused, 1);
    await cache.hint(request, customer);
    assert.equal((await cache.lookup(request)).customer, null);
  });

  it("stores no entry from a publication whose lookup came before the version moved", async () => {
    const { cache, version } = open();
    const { request, customer } = freshCustomer();
    const since = await cache.lookup(request);
    version.now++;
    await cache.lookup(freshCustomer().request); // empties
    await cache.publish(customer, [], request, since);
    assert.equal((await cache.lookup(request)).customer, null);
    // The same publication from a lookup of the new epoch stores it.
    await cache.publish(customer, [], request, await cache.lookup(request));
    assert.deepEqual((await cache.lookup(request)).customer, customer);
  });

  it("lets a publication from before the version moved replace an older entry filled since", async () => {
    const { cache, version } = open();
    const { request, customer } = freshCustomer();
    const since = await cache.lookup(request); // the writer's lookup
    version.now++;
    await cache.lookup(freshCustomer().request); // empties
    // A reader fills the customer as it was before the writer's commit.
    await cache.hint(request, customer);
    const { ticket } = await cache.lookup(request);
    assert.ok(ticket);
    await cache.fill(ticket, customer, request);
    // The writer commits a new phone, answers with it, and publishes.
    const grown: Customer = {
      ...customer,
      phoneNumbers: [...customer.phoneNumbers, "+15550000000"],
      secondaryContactIds: [customer.primaryContactId + 1],
    };
    await cache.publish(grown, [], { email: request.email, phoneNumber: "+15550000000" }, since);
    assert.deepEqual(
      (await cache.lookup({ email: request.email, phoneNumber: null })).customer,
      grown,
    );
  });

  it("empties itself while the version cannot be read", async () => {
    let readable = true;
    const cache = new MemoryCustomerCache({
      ttlSeconds: 3600,
      maxEntries: 1000,
      databaseVersion: () => {
        if (!readable) {
          throw new Error("The database connection is not open");
        }
        return 1;
      },
    });
    const { request, customer } = freshCustomer();
    await cache.publish(customer, [], request, MISS);
    readable = false;
    // Every turn empties it: what was stored in one turn is gone at the next.
    for (let turn = 0; turn < 3; turn++) {
      const lookup = await cache.lookup(request);
      assert.equal(lookup.customer, null);
      await cache.publish(customer, [], request, lookup);
    }
    assert.equal(cache.stats().emptied, 3);
    readable = true;
    await cache.lookup(request); // read again, but unlike the unknown version: one last emptying
    await cache.publish(customer, [], request, await cache.lookup(request));
    assert.deepEqual((await cache.lookup(request)).customer, customer);
    assert.equal(cache.stats().emptied, 4);
  });
});
