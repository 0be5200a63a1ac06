import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { allContacts, createTestDatabase, migratedDatabaseForSuite } from "./support/databases.js";
import { startServer } from "./support/server.js";

function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

type Outcome =
  | { kind: "answered"; email: string; status: number; body: unknown }
  | { kind: "refused"; email: string }
  | { kind: "truncated"; email: string; status: number };

describe("server lifecycle", { timeout: 120_000 }, () => {
  const suite = migratedDatabaseForSuite("sqlite");

  it("on SIGTERM finishes every accepted request, loses no acknowledged write, and exits 0", async () => {
    const server = await startServer({ DATABASE_URL: suite.test.url });
    const outcomes: Outcome[] = [];
    let stop = false;
    let n = 0;
    const client = async (c: number) => {
      while (!stop) {
        const email = `term${c}-${n++}@hillvalley.edu`;
        let response: Response;
        try {
          response = await fetch(`${server.url}/identify`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ email }),
          });
        } catch {
          outcomes.push({ kind: "refused", email });
          stop = true;
          return;
        }
        try {
          const text = await response.text();
          outcomes.push({
            kind: "answered",
            email,
            status: response.status,
            body: JSON.parse(text),
          });
        } catch {
          outcomes.push({ kind: "truncated", email, status: response.status });
        }
      }
    };
    const clients = Array.from({ length: 32 }, (_, c) => client(c));
    await sleep(400);
    const exited = server.stop();
    await Promise.all(clients);
    assert.equal(await exited, 0, "exit code");
    assert.ok(server.lines.some((line) => line.includes("shutting down")));

    assert.deepEqual(
      outcomes.filter((o) => o.kind === "truncated"),
      [],
    );
    const answered = outcomes.filter((o) => o.kind === "answered");
    assert.ok(answered.length > 50, `answered ${answered.length}`);
    for (const outcome of answered) {
      assert.ok(outcome.status === 200 || outcome.status === 503, `status ${outcome.status}`);
    }
    const stored = new Set((await allContacts(suite.database)).map((row) => row.email));
    for (const outcome of outcomes) {
      const acknowledged = outcome.kind === "answered" && outcome.status === 200;
      // An acknowledged write is stored; a stored write was acknowledged (never done and dropped).
      assert.equal(stored.has(outcome.email), acknowledged, `${outcome.kind} ${outcome.email}`);
    }
  });

  it(
    "on SIGTERM answers the requests that were in flight (PostgreSQL, requests held on a lock)",
    { skip: process.env.TEST_POSTGRES_URL === undefined },
    async () => {
      const pgTest = await createTestDatabase("postgres");
      const server = await startServer({
        DATABASE_URL: pgTest.url,
        DATABASE_LOCK_TIMEOUT_MS: "20000",
      });
      const holder = new pg.Client({ connectionString: pgTest.url });
      await holder.connect();
      try {
        // The service locks each identifier on the first 8 bytes of SHA-256("email:" + email).
        const email = "held@hillvalley.edu";
        const digest = createHash("sha256").update(`email:${email}`).digest("hex");
        const key = BigInt.asIntN(64, BigInt(`0x${digest.slice(0, 16)}`)).toString();
        await holder.query("select pg_advisory_lock($1::bigint)", [key]);
        const inFlight = Array.from({ length: 5 }, (_, i) =>
          fetch(`${server.url}/identify`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ email, phoneNumber: `+1555000${i}` }),
          }).then(async (response) => ({
            status: response.status,
            body: (await response.json()) as { emails: string[] },
          })),
        );
        await sleep(500); // the five are now waiting inside their transactions
        const exited = server.stop();
        await sleep(500);
        await holder.query("select pg_advisory_unlock($1::bigint)", [key]);
        const answers = await Promise.all(inFlight);
        assert.deepEqual(
          answers.map((a) => a.status),
          [200, 200, 200, 200, 200],
        );
        assert.ok(answers.every((a) => a.body.emails.includes(email)));
        assert.equal(await exited, 0, server.lines.slice(-5).join("\n"));
      } finally {
        await holder.end();
        await server.stop();
        await pgTest.drop();
      }
    },
  );

  it(
    "keeps serving when PostgreSQL ends its connections under load, and loses no acknowledged write",
    { skip: process.env.TEST_POSTGRES_URL === undefined },
    async () => {
      // A server that ends a connection (a restart, a failover, pg_terminate_backend) sends an
      // error on it. On a connection checked out of the pool with no statement running, nothing
      // listened for that error, and the process died of it.
      const pgTest = await createTestDatabase("postgres");
      const server = await startServer({ DATABASE_URL: pgTest.url, CACHE: "off" });
      const admin = new pg.Client({ connectionString: pgTest.url });
      await admin.connect();
      try {
        const acknowledged: string[] = [];
        const statuses = new Set<number>();
        const refused: string[] = [];
        let stop = false;
        let n = 0;
        const client = async (c: number) => {
          while (!stop) {
            const email = `ended${c}-${n++}@hillvalley.edu`;
            let response: Response;
            try {
              response = await fetch(`${server.url}/identify`, {
                method: "POST",
                headers: { "content-type": "application/json" },
                body: JSON.stringify({ email, phoneNumber: `+1555${c}` }),
              });
              await response.text();
            } catch (error) {
              refused.push(String(error));
              stop = true;
              return;
            }
            statuses.add(response.status);
            if (response.status === 200) {
              acknowledged.push(email);
            }
          }
        };
        const clients = Array.from({ length: 32 }, (_, c) => client(c));
        for (let sweep = 0; sweep < 8; sweep++) {
          await sleep(250);
          await admin.query(
            "select pg_terminate_backend(pid) from pg_stat_activity " +
              "where datname = current_database() and pid <> pg_backend_pid()",
          );
        }
        await sleep(1000);
        stop = true;
        await Promise.all(clients);
        assert.deepEqual(refused, [], server.lines.slice(-3).join("\n"));
        assert.equal(server.process.exitCode, null);
        assert.ok(
          [...statuses].every((s) => s === 200 || s === 500),
          [...statuses].join(),
        );
        const after = await fetch(`${server.url}/identify`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ email: "after@hillvalley.edu" }),
        });
        assert.equal(after.status, 200);
        const stored = new Set(
          (await admin.query<{ email: string }>('select email from "Contact"')).rows.map(
            (row) => row.email,
          ),
        );
        assert.ok(acknowledged.length > 100, `acknowledged ${acknowledged.length}`);
        assert.deepEqual(
          acknowledged.filter((email) => !stored.has(email)),
          [],
        );
      } finally {
        await admin.end();
        await server.stop();
        await pgTest.drop();
      }
    },
  );

  it("runs WORKERS processes on one port, aggregates their metrics, and stops them all", async () => {
    // CACHE=on asks for a cache that WORKERS > 1 without Redis cannot share (CACHE=auto would not).
    const server = await startServer({ DATABASE_URL: suite.test.url, WORKERS: "2", CACHE: "on" });
    const pid = server.process.pid ?? 0;
    for (let i = 0; i < 50 && childrenOf(pid).length < 2; i++) {
      await sleep(100);
    }
    const workers = childrenOf(pid);
    assert.equal(workers.length, 2, "two worker processes");
    // Both workers must be listening before the load: each prints its own line.
    for (
      let i = 0;
      i < 50 && server.lines.filter((l) => l.includes("Server listening")).length < 2;
      i++
    ) {
      await sleep(100);
    }
    const results = await Promise.all(
      Array.from({ length: 60 }, (_, i) =>
        fetch(`${server.url}/identify`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ email: `worker${i}@hillvalley.edu` }),
        }).then((r) => r.status),
      ),
    );
    assert.deepEqual(new Set(results), new Set([200]));
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const total = [
      ...metrics.matchAll(
        /http_requests_total\{route="\/identify",method="POST",status="200"\} (\d+)/g,
      ),
    ]
      .map((m) => Number(m[1]))
      .reduce((a, b) => a + b, 0);
    assert.equal(total, 60, "the counts of both workers, aggregated");
    assert.ok(
      server.lines.some((line) => line.includes("the in-process cache would not be shared")),
    );
    assert.equal(await server.stop(), 0);
    for (const worker of workers) {
      assert.throws(() => process.kill(worker, 0), "worker stopped");
    }
  });
});
