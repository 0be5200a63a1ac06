import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { Database } from "../../src/storage/database.js";
import { readMergeHistory } from "../../src/storage/merge-log.repository.js";
import { allContacts, dialectsUnderTest, keptAnswers } from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";
import {
  Components,
  customersOf,
  expectedAnswer,
  invariantViolations,
  keptAnswerViolations,
  runPool,
  seededRandom,
} from "../support/invariants.js";
import type { Answer } from "../support/invariants.js";
import { deleteKeys, testRedisUrl, uniquePrefix } from "../support/redis.js";
import { postIdentify, twoServersOnOneDatabase } from "../support/server.js";
import type { ServerProcess } from "../support/server.js";

const REQUESTS = 600;
const IN_FLIGHT = 64;
const GROUPS = 8;
const EMAILS_PER_GROUP = 5;
const PHONES_PER_GROUP = 5;

interface Body {
  email?: string;
  phoneNumber?: string;
}

/**
 * Several server processes on one database, many overlapping requests over a small pool of
 * identifiers: the stored graph must satisfy every invariant, and each identifier's answer must be
 * exactly its connected component of the requests sent.
 */
const redisUrl = testRedisUrl();

// With CACHE=off the database alone is under test. With Redis, a miss that names cached
// customers goes straight to the locked transaction (the cache's lead), a path of its own. On
// SQLite each process also runs with CACHE=on: an in-process cache that the other's commits empty.
for (const [dialect, cache] of [
  ...dialectsUnderTest().flatMap((d) =>
    redisUrl === null ? [[d, "off"] as const] : [[d, "off"] as const, [d, "redis"] as const],
  ),
  ["sqlite", "in-process"] as const,
]) {
  describe(
    `concurrent identify from two processes on ${dialect}, cache ${cache}`,
    { timeout: 180_000 },
    () => {
      let test: TestDatabase;
      let database: Database;
      let servers: ServerProcess[] = [];
      /** Every primaryContactId answered so far: each created customer is answered once at least. */
      const answeredPrimaries = new Set<number>();
      const prefix = uniquePrefix();

      before(async () => {
        ({ test, database, servers } = await twoServersOnOneDatabase(dialect, cache, prefix));
      });

      after(async () => {
        const codes = await Promise.all(servers.map((server) => server.stop()));
        await database.destroy();
        await test.drop();
        if (cache === "redis") {
          await deleteKeys(redisUrl ?? "", prefix);
        }
        assert.deepEqual(
          codes,
          servers.map(() => 0),
          "servers shut down cleanly",
        );
      });

      async function send(index: number, body: Body): Promise<Answer> {
        const server = servers[index % servers.length];
        assert.ok(server);
        const response = await postIdentify(server.url, body);
        if (response.status !== 200) {
          // The reason is only in the server's log, under the request id.
          const { requestId } = response.body as { requestId?: string };
          await sleep(200);
          const logged = servers
            .flatMap((s) => s.lines)
            .filter((line) => requestId !== undefined && line.includes(requestId));
          assert.fail(
            `${JSON.stringify(body)} -> ${response.status} ${JSON.stringify(response.body)}\n${logged.join("\n")}`,
          );
        }
        const answer = response.body as Answer;
        answeredPrimaries.add(answer.primaryContactId);
        return answer;
      }

      it("keeps the graph sound and answers every identifier with its component", async () => {
        const seed = Number(process.env.TEST_SEED ?? Date.now() % 1_000_000);
        const random = seededRandom(seed);
        const pick = (n: number) => Math.floor(random() * n);
        const run = `${dialect}${seed}`;
        const bodies: Body[] = [];
        const components = new Components();
        for (let i = 0; i < REQUESTS; i++) {
          const group = pick(GROUPS);
          const email = `g${group}-e${pick(EMAILS_PER_GROUP)}@${run}.test`;
          const phone = `+1555${String(group * 100 + pick(PHONES_PER_GROUP)).padStart(4, "0")}`;
          const shape = random();
          const body: Body =
            shape < 0.7
              ? { email, phoneNumber: phone }
              : shape < 0.85
                ? { email }
                : { phoneNumber: phone };
          bodies.push(body);
          components.add(
            ...[
              body.email && `email:${body.email}`,
              body.phoneNumber && `phone:${body.phoneNumber}`,
            ].filter((v): v is string => typeof v === "string"),
          );
        }

        let inFlight = 0;
        let peak = 0;
        await runPool(bodies.length, IN_FLIGHT, async (index) => {
          inFlight++;
          peak = Math.max(peak, inFlight);
          try {
            const body = bodies[index];
            assert.ok(body);
            const answer = await send(index, body);
            if (body.email) {
              assert.ok(answer.emails.includes(body.email), `answer of #${index} lacks its email`);
            }
            if (body.phoneNumber) {
              assert.ok(
                answer.phoneNumbers.includes(body.phoneNumber),
                `answer of #${index} lacks its phone`,
              );
            }
          } finally {
            inFlight--;
          }
        });
        assert.ok(peak >= 50, `at least 50 requests in flight (peak ${peak}), seed ${seed}`);

        const rows = await allContacts(database);
        assert.deepEqual(invariantViolations(rows), [], `seed ${seed}`);
        const customers = customersOf(rows);
        // SQLite: every customer's answer was kept by its last write, and agrees with its rows.
        const kept = await keptAnswers(database);
        assert.deepEqual(keptAnswerViolations(rows, kept), [], `seed ${seed}`);
        assert.equal(kept.size, dialect === "sqlite" ? customers.size : 0, `seed ${seed}`);

        // The merge log: every primary ever answered that is no longer one was merged away, once.
        const merged = (
          await database.db.selectFrom("ContactMerge").select("mergedId").execute()
        ).map((row) => row.mergedId);
        assert.equal(new Set(merged).size, merged.length, `a customer merged twice, seed ${seed}`);
        assert.deepEqual(
          merged.sort((a, b) => a - b),
          [...answeredPrimaries].filter((id) => !customers.has(id)).sort((a, b) => a - b),
          `the merge log against the primaries that went, seed ${seed}`,
        );
        assert.ok(merged.length > 0, `some merges, seed ${seed}`);

        const groups = components.groups();
        assert.equal(customers.size, groups.length, `one customer per component, seed ${seed}`);

        // Each identifier, asked alone (through both processes), answers exactly its component.
        const checks = groups.flatMap((group) =>
          group.map((identifier) => ({ identifier, group })),
        );
        await runPool(checks.length, 16, async (index) => {
          const check = checks[index];
          assert.ok(check);
          const [kind, value] = check.identifier.split(/:(.*)/s) as [string, string];
          const answer = await send(
            index,
            kind === "email" ? { email: value } : { phoneNumber: value },
          );
          assert.deepEqual(answer, expectedAnswer(rows, answer.primaryContactId), `seed ${seed}`);
          const answered = [
            ...answer.emails.map((e) => `email:${e}`),
            ...answer.phoneNumbers.map((p) => `phone:${p}`),
          ].sort();
          assert.deepEqual(answered, [...check.group].sort(), `${check.identifier}, seed ${seed}`);
        });
        assert.deepEqual(
          await allContacts(database),
          rows,
          "lookups of known identifiers write nothing",
        );
      });

      it("creates exactly one customer when many requests bring the same new email at once", async () => {
        const email = `burst-${Date.now()}@${dialect}.test`;
        const answers: Answer[] = [];
        await runPool(60, 60, async (index) => {
          answers.push(
            await send(index, { email, phoneNumber: `+1666${String(index).padStart(4, "0")}` }),
          );
        });
        const rows = (await allContacts(database)).filter((row) => row.email === email);
        assert.equal(rows.length, 60, "each request brought a new phone");
        const primaries = rows.filter((row) => row.linkPrecedence === "primary");
        assert.equal(primaries.length, 1);
        assert.ok(
          rows.every((row) => row.id === primaries[0]?.id || row.linkedId === primaries[0]?.id),
        );
        assert.deepEqual(invariantViolations(await allContacts(database)), []);
        assert.ok(answers.every((answer) => answer.primaryContactId === primaries[0]?.id));
      });

      it("writes one row when the same new request arrives many times at once", async () => {
        const body = { email: `twin-${Date.now()}@${dialect}.test`, phoneNumber: "+17770001" };
        await runPool(60, 60, async (index) => {
          await send(index, body);
        });
        const rows = (await allContacts(database)).filter((row) => row.email === body.email);
        assert.equal(rows.length, 1);
      });

      it("merges a chain of customers bridged at once into the oldest one", async () => {
        const tag = `${Date.now()}`;
        const seeds: Answer[] = [];
        for (let i = 0; i < 10; i++) {
          seeds.push(
            await send(i, {
              email: `link${i}-${tag}@${dialect}.test`,
              phoneNumber: `+1888${tag.slice(-4)}${i}`,
            }),
          );
        }
        // Bridge i with i+1 for every i, all at once: the result is one customer under the oldest.
        await runPool(9, 9, async (i) => {
          await send(i, {
            email: `link${i}-${tag}@${dialect}.test`,
            phoneNumber: `+1888${tag.slice(-4)}${i + 1}`,
          });
        });
        const rows = await allContacts(database);
        assert.deepEqual(invariantViolations(rows), []);
        const winner = seeds[0]?.primaryContactId ?? -1;
        const answer = await send(0, { email: `link9-${tag}@${dialect}.test` });
        assert.deepEqual(answer, expectedAnswer(rows, winner));
        assert.equal(answer.secondaryContactIds.length, 9);
        // Each of the nine newer customers was merged exactly once, whatever the order.
        const history = await readMergeHistory(database.db, [winner]);
        assert.deepEqual(
          history.map((merge) => merge.mergedId).sort((a, b) => a - b),
          seeds
            .slice(1)
            .map((seed) => seed.primaryContactId)
            .sort((a, b) => a - b),
        );
      });

      // Every transaction locks customers in ascending id order (a late find starts it over), so
      // all the contention above must not have made one deadlock.
      it("retried no transaction for a deadlock", async () => {
        for (const server of servers) {
          const text = await (await fetch(`${server.url}/metrics`)).text();
          const retries = text
            .split("\n")
            .filter((line) => line.startsWith("db_transaction_retries_total{"));
          assert.ok(retries.length > 0, text);
          assert.ok(
            retries.includes('db_transaction_retries_total{reason="deadlock"} 0'),
            retries.join("\n"),
          );
        }
      });
    },
  );
}
