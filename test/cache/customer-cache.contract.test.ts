import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { customerDigest, MISS } from "../../src/cache/customer-cache.js";
import type { CustomerCache } from "../../src/cache/customer-cache.js";
import { MemoryCustomerCache } from "../../src/cache/memory.cache.js";
import { RedisCustomerCache } from "../../src/cache/redis.cache.js";
import type { Customer, IdentifyRequest } from "../../src/domain/contact.js";
import {
  deleteKeys,
  keysUnder,
  startOwnRedis,
  testRedisUrl,
  uniquePrefix,
} from "../support/redis.js";
import type { OwnRedis } from "../support/redis.js";
import { freshCustomer } from "../support/customers.js";

interface Adapter {
  readonly name: string;
  create(ttlSeconds?: number): Promise<CustomerCache>;
}

const redisUrl = testRedisUrl();
const prefixes: string[] = [];
const adapters: Adapter[] = [
  {
    name: "in-process",
    create: (ttlSeconds = 3600) =>
      Promise.resolve(new MemoryCustomerCache({ ttlSeconds, maxEntries: 1000 })),
  },
  {
    // As on SQLite, with no other process committing (the version never moves): the same rules.
    name: "in-process, with a database version",
    create: (ttlSeconds = 3600) =>
      Promise.resolve(
        new MemoryCustomerCache({ ttlSeconds, maxEntries: 1000, databaseVersion: () => 1 }),
      ),
  },
];
if (redisUrl !== null) {
  adapters.push({
    name: "redis",
    create: async (ttlSeconds = 3600) => {
      const prefix = uniquePrefix();
      prefixes.push(prefix);
      const cache = new RedisCustomerCache({ url: redisUrl, prefix, ttlSeconds, timeoutMs: 200 });
      assert.ok(await cache.waitUntilReady(5000));
      return cache;
    },
  });
}

after(async () => {
  if (redisUrl !== null) {
    for (const prefix of prefixes) {
      await deleteKeys(redisUrl, prefix);
    }
  }
});

/**
 * Where the cache's keys live on `redis`: the prefix, then the first 12 hex digits of this Redis's
 * run id and replication id (worked out here apart from the cache's own code, which it checks).
 */
async function keyNamespace(redis: Redis, prefix: string): Promise<string> {
  const info = await redis.info();
  const runId = /^run_id:([0-9a-f]{12})/m.exec(info)?.[1];
  const replicationId = /^master_replid:([0-9a-f]{12})/m.exec(info)?.[1];
  assert.ok(runId && replicationId);
  return `${prefix}${runId}${replicationId}:`;
}

// Publications below pass MISS as the lookup they follow: epoch 0, no cache here ever empties
// itself (test/cache/memory-cache.test.ts has those that do).

/**
 * A reader's ticket for a fresh customer, then a writer that commits a new row of that customer
 * and publishes it, between the reader's database read and its fill.
 */
async function publishedAfterTicket(cache: CustomerCache) {
  const { request, customer } = freshCustomer();
  await cache.hint(request, customer);
  const { ticket } = await cache.lookup(request);
  assert.ok(ticket);
  const grown: Customer = {
    ...customer,
    emails: [...customer.emails, "grown@hillvalley.edu"],
    secondaryContactIds: [customer.primaryContactId + 1],
  };
  await cache.publish(grown, [], request, MISS);
  return { request, customer, ticket, grown };
}

for (const adapter of adapters) {
  describe(`customer cache contract: ${adapter.name}`, () => {
    const caches: CustomerCache[] = [];
    const open = async (ttl?: number) => {
      const cache = await adapter.create(ttl);
      caches.push(cache);
      return cache;
    };
    after(async () => {
      await Promise.all(caches.map((cache) => cache.close()));
    });

    it("misses without a ticket when the index knows nothing", async () => {
      const cache = await open();
      const { request } = freshCustomer();
      assert.deepEqual(await cache.lookup(request), MISS);
      assert.equal(cache.stats().misses, 1);
    });

    it("gives a ticket once hinted, and a hit once filled with it", async () => {
      const cache = await open();
      const { request, customer } = freshCustomer();
      await cache.hint(request, customer);
      const miss = await cache.lookup(request);
      assert.equal(miss.customer, null);
      assert.ok(miss.ticket);
      assert.equal(miss.ticket.digest, customerDigest(customer.primaryContactId));
      await cache.fill(miss.ticket, customer, request);
      assert.deepEqual(await cache.lookup(request), { customer, ticket: null, lead: [], epoch: 0 });
      assert.deepEqual(await cache.lookup({ email: request.email, phoneNumber: null }), {
        customer,
        ticket: null,
        lead: [],
        epoch: 0,
      });
      assert.deepEqual(
        { hits: cache.stats().hits, fills: cache.stats().fills },
        { hits: 2, fills: 1 },
      );
    });

    it("misses when the cached customer lacks one of the request's values", async () => {
      const cache = await open();
      const { request, customer } = freshCustomer();
      await cache.hint(request, customer);
      const { ticket } = await cache.lookup(request);
      assert.ok(ticket);
      const without = { ...customer, phoneNumbers: [] };
      await cache.fill(ticket, without, request);
      assert.equal((await cache.lookup(request)).customer, null);
      assert.deepEqual(
        (await cache.lookup({ email: request.email, phoneNumber: null })).customer,
        without,
      );
    });

    it("misses without a ticket when the identifiers point at two customers", async () => {
      const cache = await open();
      const a = freshCustomer();
      const b = freshCustomer();
      await cache.hint({ email: a.request.email, phoneNumber: null }, a.customer);
      await cache.hint({ email: null, phoneNumber: b.request.phoneNumber }, b.customer);
      assert.deepEqual(
        await cache.lookup({ email: a.request.email, phoneNumber: b.request.phoneNumber }),
        MISS,
      );
    });

    it("leads to the cached customers the index names, unless one holds every value", async () => {
      const cache = await open();
      const a = freshCustomer();
      const b = freshCustomer();
      for (const { request, customer } of [a, b]) {
        await cache.publish(customer, [], request, MISS);
      }
      const [aId, bId] = [a.customer.primaryContactId, b.customer.primaryContactId];
      // A new phone for a's customer; a bridge of the two, in ascending id order either way.
      assert.deepEqual(
        await cache.lookup({ email: a.request.email, phoneNumber: "+19990000001" }),
        { ...MISS, lead: [aId] },
      );
      assert.deepEqual(
        await cache.lookup({ email: b.request.email, phoneNumber: a.request.phoneNumber }),
        { ...MISS, lead: [aId, bId].sort((x, y) => x - y) },
      );
      // The phone's index is gone but the customer holds it: nothing to write, no lead.
      const c = freshCustomer();
      await cache.publish(c.customer, [], { email: c.request.email, phoneNumber: null }, MISS);
      assert.deepEqual(await cache.lookup(c.request), MISS);
      // A customer merged away is a tombstone, which leads nowhere.
      const merged: Customer = {
        ...a.customer,
        emails: [...a.customer.emails, ...b.customer.emails],
        phoneNumbers: [...a.customer.phoneNumbers, ...b.customer.phoneNumbers],
        secondaryContactIds: [bId],
      };
      await cache.publish(merged, [bId], a.request, MISS);
      assert.deepEqual(
        await cache.lookup({ email: b.request.email, phoneNumber: "+19990000002" }),
        MISS,
      );
      // Nor a lead short of it: b's email reaches a's customer, which its index does not say.
      const d = freshCustomer();
      await cache.publish(d.customer, [], d.request, MISS);
      assert.deepEqual(
        await cache.lookup({ email: b.request.email, phoneNumber: d.request.phoneNumber }),
        MISS,
      );
    });

    it("lets a writer's publication replace an older entry, and never the reverse", async () => {
      const cache = await open();
      const { request, customer } = freshCustomer();
      await cache.hint(request, customer);
      const first = await cache.lookup(request);
      assert.ok(first.ticket);
      await cache.fill(first.ticket, customer, request);
      const grown: Customer = {
        ...customer,
        phoneNumbers: [...customer.phoneNumbers, "+19990001"],
        secondaryContactIds: [customer.primaryContactId + 1],
      };
      await cache.publish(grown, [], { email: request.email, phoneNumber: "+19990001" }, MISS);
      assert.deepEqual((await cache.lookup(request)).customer, grown);
      // A writer whose publication arrives late, with the older state, changes nothing.
      await cache.publish(customer, [], request, MISS);
      assert.deepEqual((await cache.lookup(request)).customer, grown);
      assert.deepEqual(
        (await cache.lookup({ email: null, phoneNumber: "+19990001" })).customer,
        grown,
      );
    });

    it("refuses a fill whose ticket was taken before a publication (the fill-after-invalidate race)", async () => {
      const cache = await open();
      const { request, customer, ticket, grown } = await publishedAfterTicket(cache);
      // The reader's older state is refused.
      await cache.fill(ticket, customer, request);
      assert.deepEqual((await cache.lookup(request)).customer, grown);
      assert.equal(cache.stats().staleFillsRefused, 1);
      assert.equal(cache.stats().fills, 0);
    });

    it("refuses a fill taken before a publication even once the published entry is gone", async () => {
      const cache = await open();
      const { request, customer } = freshCustomer();
      await cache.hint(request, customer);
      const { ticket } = await cache.lookup(request);
      assert.ok(ticket);
      const other = freshCustomer();
      // A merge demotes this customer: its entry becomes a tombstone, never to be filled again.
      await cache.publish(other.customer, [customer.primaryContactId], other.request, MISS);
      await cache.fill(ticket, customer, request);
      assert.deepEqual(await cache.lookup(request), MISS);
      await cache.publish(customer, [], request, MISS);
      assert.equal(
        (await cache.lookup({ email: request.email, phoneNumber: null })).customer,
        null,
      );
    });

    it("refuses a fill taken before a publication even once the published entry has expired", async () => {
      const cache = await open(1);
      const { request, customer, ticket, grown } = await publishedAfterTicket(cache);
      await sleep(1300);
      // Another reader finds the customer again (a ticket of its own) before the first one fills.
      await cache.hint(request, grown);
      assert.ok((await cache.lookup(request)).ticket);
      await cache.fill(ticket, customer, request);
      assert.equal((await cache.lookup(request)).customer, null);
      assert.equal(cache.stats().staleFillsRefused, 1);
    });

    it("repairs an older entry on a hint, tombstones a secondary's entry, and creates none", async () => {
      const cache = await open();
      const a = freshCustomer();
      const b = freshCustomer();
      const c = freshCustomer();
      for (const { request, customer } of [a, b]) {
        await cache.hint(request, customer);
        const { ticket } = await cache.lookup(request);
        assert.ok(ticket);
        await cache.fill(ticket, customer, request);
      }
      // a's customer as the database now has it: b merged under it by a writer that never published.
      const merged: Customer = {
        ...a.customer,
        secondaryContactIds: [b.customer.primaryContactId],
      };
      await cache.hint(a.request, merged);
      assert.deepEqual((await cache.lookup(a.request)).customer, merged);
      assert.deepEqual(await cache.lookup(b.request), MISS);
      await cache.hint(b.request, b.customer); // an older read: the tombstone stays
      assert.equal((await cache.lookup(b.request)).customer, null);
      await cache.hint(a.request, a.customer); // an older version: not stored
      assert.deepEqual((await cache.lookup(a.request)).customer, merged);
      await cache.hint(c.request, c.customer); // no entry: none created
      const miss = await cache.lookup(c.request);
      assert.equal(miss.customer, null);
      assert.ok(miss.ticket);
      assert.equal(cache.stats().repairs, 2);
    });

    it("tombstones a secondary's entry on a fill as well", async () => {
      const cache = await open();
      const b = freshCustomer();
      await cache.hint(b.request, b.customer);
      const bTicket = (await cache.lookup(b.request)).ticket;
      assert.ok(bTicket);
      await cache.fill(bTicket, b.customer, b.request);
      assert.deepEqual((await cache.lookup(b.request)).customer, b.customer);
      // The database now has b under c's customer, merged by a writer that never published.
      const c = freshCustomer();
      const merged: Customer = {
        ...c.customer,
        secondaryContactIds: [b.customer.primaryContactId],
      };
      await cache.hint(c.request, c.customer);
      const cTicket = (await cache.lookup(c.request)).ticket;
      assert.ok(cTicket);
      await cache.fill(cTicket, merged, c.request);
      assert.deepEqual(await cache.lookup(b.request), MISS);
      assert.deepEqual((await cache.lookup(c.request)).customer, merged);
      assert.equal(cache.stats().repairs, 1);
    });

    it("refuses a fill for another customer than the ticket's", async () => {
      const cache = await open();
      const { request, customer } = freshCustomer();
      await cache.hint(request, customer);
      const { ticket } = await cache.lookup(request);
      assert.ok(ticket);
      await cache.fill(ticket, { ...customer, primaryContactId: 1 }, request);
      assert.equal((await cache.lookup(request)).customer, null);
      assert.equal(cache.stats().staleFillsRefused, 1);
    });

    it("expires entries after the TTL", async () => {
      const cache = await open(1);
      const { request, customer } = freshCustomer();
      await cache.hint(request, customer);
      const { ticket } = await cache.lookup(request);
      assert.ok(ticket);
      await cache.fill(ticket, customer, request);
      assert.deepEqual((await cache.lookup(request)).customer, customer);
      await sleep(1300);
      assert.equal((await cache.lookup(request)).customer, null);
    });
  });
}

if (redisUrl !== null) {
  describe("redis cache keys", () => {
    it("stores the consolidated answer under the prefix, the Redis run and replication ids and the hex SHA-256 of the primary id, with a one-hour expiry", async () => {
      const prefix = uniquePrefix();
      prefixes.push(prefix);
      const cache = new RedisCustomerCache({
        url: redisUrl,
        prefix,
        ttlSeconds: 3600,
        timeoutMs: 200,
      });
      assert.ok(await cache.waitUntilReady(5000));
      const redis = new Redis(redisUrl);
      try {
        const { request, customer } = freshCustomer();
        await cache.hint(request, customer);
        const { ticket } = await cache.lookup(request);
        assert.ok(ticket);
        await cache.fill(ticket, customer, request);

        const digest = createHash("sha256").update(String(customer.primaryContactId)).digest("hex");
        const key = `${await keyNamespace(redis, prefix)}${digest}`;
        const stored = await redis.get(key);
        assert.ok(stored);
        assert.deepEqual(JSON.parse(stored), customer);
        const ttl = await redis.ttl(key);
        assert.ok(ttl > 3590 && ttl <= 3600, `ttl ${ttl}`);

        const keys = await keysUnder(redisUrl, prefix);
        for (const key of keys) {
          assert.doesNotMatch(key, /@|hillvalley|\+1555/, `no identifier in key ${key}`);
        }
      } finally {
        redis.disconnect();
        await cache.close();
      }
    });

    it("sends the lookups of one turn of the event loop as one script, each answered as if alone", async () => {
      // A Redis of the test's own, so that its command counts are this test's alone.
      const own = await startOwnRedis();
      const prefix = "identity:v1:";
      const cache = new RedisCustomerCache({
        url: own.url,
        prefix,
        ttlSeconds: 60,
        timeoutMs: 500,
      });
      const client = new Redis(own.url);
      /** Script calls since the last reset of Redis's command counts. */
      const scriptCalls = async (): Promise<number> => {
        const stats = await client.info("commandstats");
        return [...stats.matchAll(/^cmdstat_eval(?:sha)?:calls=(\d+)/gm)].reduce(
          (sum, [, calls]) => sum + Number(calls),
          0,
        );
      };
      try {
        assert.ok(await cache.waitUntilReady(5000));
        // Two cached customers (hits), one only indexed (a ticket), one unknown (a plain miss),
        // and a request naming both cached customers (a lead).
        const [a, b, indexed, unknown] = [1, 2, 3, 4].map(() => freshCustomer());
        assert.ok(a && b && indexed && unknown);
        for (const { request, customer } of [a, b]) {
          await cache.publish(customer, [], request);
        }
        await cache.hint(indexed.request, indexed.customer);
        const requests: IdentifyRequest[] = [
          a.request,
          { email: b.request.email, phoneNumber: null },
          indexed.request,
          unknown.request,
          { email: a.request.email, phoneNumber: b.request.phoneNumber },
        ];
        // The lookup script loaded, then Redis's counts reset: from here on every script call
        // counted is a lookup's.
        await cache.lookup(freshCustomer().request);
        await client.config("RESETSTAT");

        const together = await Promise.all(requests.map((request) => cache.lookup(request)));
        const callsTogether = await scriptCalls();
        const alone = [];
        for (const request of requests) {
          alone.push(await cache.lookup(request));
        }
        const callsAlone = (await scriptCalls()) - callsTogether;

        assert.deepEqual(together, alone);
        assert.deepEqual(together[0]?.customer, a.customer);
        assert.deepEqual(together[1]?.customer, b.customer);
        assert.ok(together[2]?.ticket);
        assert.deepEqual(together[3], MISS);
        assert.deepEqual(together[4]?.lead, [
          a.customer.primaryContactId,
          b.customer.primaryContactId,
        ]);
        // One script call for the five lookups of one turn, then one per lookup.
        assert.equal(callsTogether, 1);
        assert.equal(callsAlone, 5);

        // An entry that is not JSON fails its own lookup only: the turn's others are answered.
        await client.set(
          `${await keyNamespace(client, prefix)}${customerDigest(a.customer.primaryContactId)}`,
          "{",
        );
        const errors = cache.stats().errors;
        const [broken, fine] = await Promise.all([
          cache.lookup(a.request),
          cache.lookup(b.request),
        ]);
        assert.deepEqual(broken, MISS);
        assert.deepEqual(fine.customer, b.customer);
        assert.equal(cache.stats().errors, errors + 1);
      } finally {
        client.disconnect();
        await cache.close();
        await own.stop();
      }
    });

    /** A writer and another instance on a Redis of the test's own, and a customer at v6 and v7. */
    async function withTwoInstances(
      test: (setup: {
        readonly own: OwnRedis;
        readonly writer: RedisCustomerCache;
        readonly other: RedisCustomerCache;
        readonly request: IdentifyRequest;
        readonly v6: Customer;
        readonly v7: Customer;
      }) => Promise<void>,
    ): Promise<void> {
      const own = await startOwnRedis();
      const options = { url: own.url, prefix: "identity:v1:", ttlSeconds: 3600, timeoutMs: 100 };
      const writer = new RedisCustomerCache(options);
      const other = new RedisCustomerCache(options);
      try {
        assert.ok(await writer.waitUntilReady(5000));
        assert.ok(await other.waitUntilReady(5000));
        const { request, customer } = freshCustomer();
        const v6: Customer = { ...customer, secondaryContactIds: [1, 2, 3, 4, 5] };
        const v7: Customer = { ...customer, secondaryContactIds: [1, 2, 3, 4, 5, 6] };
        await test({ own, writer, other, request, v6, v7 });
      } finally {
        await writer.close();
        await other.close();
        await own.stop();
      }
    }

    /** Restarts the Redis, waits until `writer` has paid what it owes, and for `other`. */
    async function restartAndSettle(
      own: OwnRedis,
      writer: RedisCustomerCache,
      other: RedisCustomerCache,
    ): Promise<void> {
      await own.start();
      for (let i = 0; i < 50 && writer.pendingInvalidations() > 0; i++) {
        await sleep(100);
      }
      assert.equal(writer.pendingInvalidations(), 0, "the debt is paid once Redis is back");
      assert.ok(await other.waitUntilReady(5000));
    }

    it("leaves a floor when a publication fails, so no older version is stored or served afterwards", async () => {
      await withTwoInstances(async ({ own, writer, other, request, v6, v7 }) => {
        await own.stop();
        await writer.publish(v7, [], request); // fails: the writer owes a floor at version 7
        assert.equal(writer.pendingInvalidations(), 1);
        await restartAndSettle(own, writer, other);
        // Another instance's publication of the older state arrives late: refused by the floor.
        await other.publish(v6, [], request);
        const miss = await other.lookup(request);
        assert.equal(miss.customer, null);
        assert.ok(miss.ticket);
        await other.fill(miss.ticket, v6, request);
        assert.equal((await other.lookup(request)).customer, null, "the older state is refused");
        const again = await other.lookup(request);
        assert.ok(again.ticket);
        await other.fill(again.ticket, v7, request);
        assert.deepEqual((await other.lookup(request)).customer, v7);
      });
    });

    it("never answers from entries that a Redis restarted from a snapshot brought back", async () => {
      const dir = mkdtempSync(join(tmpdir(), "idr-redis-"));
      const own = await startOwnRedis({ dir });
      const options = { url: own.url, prefix: "identity:v1:", ttlSeconds: 3600, timeoutMs: 100 };
      const writer = new RedisCustomerCache(options);
      const admin = new Redis(own.url);
      let later: RedisCustomerCache | null = null;
      try {
        assert.ok(await writer.waitUntilReady(5000));
        const { request, customer } = freshCustomer();
        const v2: Customer = { ...customer, secondaryContactIds: [customer.primaryContactId + 1] };
        await writer.hint(request, customer);
        const miss = await writer.lookup(request);
        assert.ok(miss.ticket);
        await writer.fill(miss.ticket, customer, request);
        assert.deepEqual((await writer.lookup(request)).customer, customer);
        await admin.save(); // the snapshot holds version 1
        await writer.publish(v2, [], request); // answered version 2
        assert.deepEqual((await writer.lookup(request)).customer, v2);
        admin.disconnect();
        await own.stop();
        await own.start(); // from the snapshot: version 1 is back in Redis
        for (let i = 0; i < 50 && !writer.available(); i++) {
          await sleep(100);
        }
        assert.ok(writer.available());
        assert.equal((await writer.lookup(request)).customer, null, "not version 1");
        later = new RedisCustomerCache(options);
        assert.ok(await later.waitUntilReady(5000));
        assert.equal((await later.lookup(request)).customer, null, "not version 1");
      } finally {
        admin.disconnect();
        await writer.close();
        await later?.close();
        await own.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("keeps the highest floor owed when two failed publications of a customer end out of order", async () => {
      await withTwoInstances(async ({ own, writer, other, request, v6, v7 }) => {
        await own.stop();
        await writer.publish(v7, [], request); // answered v7: owes a floor at 7
        await writer.publish(v6, [], request); // an older writer's, failing later: still 7
        await restartAndSettle(own, writer, other);
        await other.publish(v6, [], request);
        assert.equal((await other.lookup(request)).customer, null, "v6 is older than an answer");
      });
    });

    it("degrades to misses, within the timeout, when Redis cannot be reached", async () => {
      const cache = new RedisCustomerCache({
        url: "redis://127.0.0.1:1",
        prefix: uniquePrefix(),
        ttlSeconds: 60,
        timeoutMs: 50,
      });
      try {
        const { request, customer } = freshCustomer();
        const started = Date.now();
        assert.deepEqual(await cache.lookup(request), MISS);
        await cache.publish(customer, [7], request);
        await cache.hint(request, customer);
        assert.ok(Date.now() - started < 1000);
        // Never connected: the lookup misses without trying; the publication is owed.
        assert.ok(cache.stats().errors >= 1);
        assert.equal(cache.pendingInvalidations(), 2);
      } finally {
        await cache.close();
      }
    });
  });
}
