import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Database } from "../../src/storage/database.js";
import { allContacts, dialectsUnderTest } from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";
import {
  Components,
  expectedAnswer,
  invariantViolations,
  runPool,
  seededRandom,
} from "../support/invariants.js";
import type { Answer } from "../support/invariants.js";
import { deleteKeys, testRedisUrl, uniquePrefix } from "../support/redis.js";
import { postIdentify, twoServersOnOneDatabase } from "../support/server.js";
import type { ServerProcess } from "../support/server.js";

const redisUrl = testRedisUrl();
const REQUESTS = 500;
const IN_FLIGHT = 48;
const GROUPS = 6;
const PER_GROUP = 4;

interface Body {
  email?: string;
  phoneNumber?: string;
}

/** The cache a server process reports it uses (GET /readyz). */
async function cacheKindOf(url: string): Promise<string> {
  const response = await fetch(`${url}/readyz`);
  const body = (await response.json()) as { cache: { kind: string } };
  return body.cache.kind;
}

/** A counter of GET /metrics: the sum of its samples with `label` (all samples if null). */
async function metric(url: string, name: string, label: string | null): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return text
    .split("\n")
    .filter((line) => line.startsWith(name) && (label === null || line.includes(label)))
    .reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
}

function covers(later: Answer, earlier: Answer): boolean {
  return (
    earlier.emails.every((e) => later.emails.includes(e)) &&
    earlier.phoneNumbers.every((p) => later.phoneNumbers.includes(p))
  );
}

/**
 * Two processes sharing one database, each with a cache: concurrent merges and reads. Every answer
 * must include everything an answer sent before it showed for the same identifier (customers only
 * grow), whichever process serves it, and at the end every identifier answers the database's truth.
 * With Redis the processes share the cache. On SQLite without Redis each has its own in-process
 * cache (CACHE=on), which the other's commits must empty (data_version).
 */
const suites = [
  ...(redisUrl === null ? [] : dialectsUnderTest().map((dialect) => [dialect, "redis"] as const)),
  ["sqlite", "in-process"] as const,
];
for (const [dialect, cache] of suites) {
  describe(
    `cache staleness across two processes on ${dialect}, ${cache} cache`,
    { timeout: 180_000 },
    () => {
      let test: TestDatabase;
      let database: Database;
      let servers: ServerProcess[] = [];
      const prefix = uniquePrefix();

      before(async () => {
        ({ test, database, servers } = await twoServersOnOneDatabase(dialect, cache, prefix));
        const kinds = await Promise.all(servers.map((server) => cacheKindOf(server.url)));
        assert.deepEqual(kinds, [
          cache === "redis" ? "redis" : "memory",
          cache === "redis" ? "redis" : "memory",
        ]);
      });

      after(async () => {
        await Promise.all(servers.map((server) => server.stop()));
        await database.destroy();
        await test.drop();
        if (cache === "redis") {
          await deleteKeys(redisUrl ?? "", prefix);
        }
      });

      async function send(serverIndex: number, body: Body): Promise<Answer> {
        const server = servers[serverIndex % servers.length];
        assert.ok(server);
        const response = await postIdentify(server.url, body);
        assert.equal(response.status, 200, JSON.stringify(response.body));
        return response.body as Answer;
      }

      it("never answers from an older version of a customer, on either process", async () => {
        const seed = Number(process.env.TEST_SEED ?? Date.now() % 1_000_000);
        const random = seededRandom(seed);
        const pick = (n: number) => Math.floor(random() * n);
        const components = new Components();
        const bodies: Body[] = [];
        for (let i = 0; i < REQUESTS; i++) {
          const group = pick(GROUPS);
          const email = `s${group}-${pick(PER_GROUP)}@${dialect}${seed}.test`;
          const phoneNumber = `+1444${group}${pick(PER_GROUP)}00`;
          const roll = random();
          // Reads dominate, as in a shop; pairs merge customers of the same group over time.
          const body: Body =
            roll < 0.35 ? { email, phoneNumber } : roll < 0.7 ? { email } : { phoneNumber };
          bodies.push(body);
          components.add(
            ...[
              body.email && `email:${body.email}`,
              body.phoneNumber && `phone:${body.phoneNumber}`,
            ].filter((v): v is string => typeof v === "string"),
          );
        }

        const violations: string[] = [];
        await runPool(bodies.length, IN_FLIGHT, async (index) => {
          const body = bodies[index];
          assert.ok(body);
          const first = await send(index, body);
          // Requests that start after `first` was answered, on the other process and on the same.
          const follow =
            body.email !== undefined
              ? { email: body.email }
              : { phoneNumber: body.phoneNumber ?? "" };
          for (const server of [index + 1, index]) {
            const second = await send(server, follow);
            if (!covers(second, first)) {
              violations.push(
                `${JSON.stringify(body)}: ${JSON.stringify(first)} then ${JSON.stringify(second)}`,
              );
            }
          }
        });
        assert.deepEqual(violations, [], `seed ${seed}`);
        if (cache === "in-process") {
          // Each process's cache answered, and was emptied by the other's commits.
          for (const server of servers) {
            assert.ok((await metric(server.url, "cache_operations_total", 'result="hit"')) > 0);
            assert.ok((await metric(server.url, "cache_operations_total", 'result="emptied"')) > 0);
          }
        }

        const rows = await allContacts(database);
        assert.deepEqual(invariantViolations(rows), [], `seed ${seed}`);
        const identifiers = components.groups().flat();
        // Twice through each process: the second answer comes from the cache.
        for (let round = 0; round < 2; round++) {
          for (const identifier of identifiers) {
            const [kind, value] = identifier.split(/:(.*)/s) as [string, string];
            const body = kind === "email" ? { email: value } : { phoneNumber: value };
            for (let s = 0; s < servers.length; s++) {
              const answer = await send(s, body);
              assert.deepEqual(
                answer,
                expectedAnswer(rows, answer.primaryContactId),
                `${identifier}, seed ${seed}`,
              );
            }
          }
        }
      });
    },
  );
}
