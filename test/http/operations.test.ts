import assert from "node:assert/strict";
import { createServer } from "node:net";
import type { AddressInfo, Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { NoCache } from "../../src/cache/customer-cache.js";
import { readinessOf } from "../../src/deps.js";
import { openDatabase } from "../../src/storage/database.js";
import type { Database } from "../../src/storage/database.js";
import { startApp } from "../support/app.js";
import type { RunningApp } from "../support/app.js";
import { createTestDatabase, openMigrated } from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";
import { postIdentify } from "../support/server.js";

interface OpenApi {
  openapi: string;
  paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
}

describe("operations endpoints", () => {
  let test: TestDatabase;
  let database: Database;
  let running: RunningApp;

  before(async () => {
    test = await createTestDatabase("sqlite");
    database = await openMigrated(test);
    running = await startApp(database);
  });

  after(async () => {
    await running.close();
    await database.destroy();
    await test.drop();
  });

  it("answers /healthz while the process runs", async () => {
    const response = await fetch(`${running.url}/healthz`);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { status: "ok" });
    assert.ok(response.headers.get("x-request-id"));
  });

  it("answers /readyz with the database and cache state", async () => {
    const response = await fetch(`${running.url}/readyz`);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), {
      status: "ready",
      database: "ok",
      cache: { kind: "memory", available: true },
    });
  });

  it("answers /readyz with 503 when the database is unreachable or not migrated", async () => {
    const unreachable = openDatabase(
      { dialect: "postgres", url: "postgres://root@127.0.0.1:1/nowhere" },
      { poolSize: 1, lockTimeoutMs: 1000 },
    );
    const down = await startApp(unreachable);
    const fresh = await createTestDatabase("sqlite");
    const unmigrated = openDatabase(fresh.target, { poolSize: 1, lockTimeoutMs: 1000 });
    const pending = await startApp(unmigrated);
    try {
      const response = await fetch(`${down.url}/readyz`);
      assert.equal(response.status, 503);
      assert.deepEqual(await response.json(), {
        status: "unavailable",
        database: "unreachable",
        cache: { kind: "memory", available: true },
      });
      const notMigrated = await fetch(`${pending.url}/readyz`);
      assert.equal(notMigrated.status, 503);
      assert.equal(
        ((await notMigrated.json()) as { database: string }).database,
        "migrations pending",
      );
    } finally {
      await down.close();
      await unreachable.destroy();
      await pending.close();
      await unmigrated.destroy();
      await fresh.drop();
    }
  });

  it('answers /readyz "unreachable" in its bound when the database does not answer', async () => {
    // A server that accepts connections and never answers, as a stalled one does: the check
    // would wait for the driver's own timeout (5 s to connect; on an open connection, as long
    // as TCP does) without the bound.
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const { port } = silent.address() as AddressInfo;
    const stalled = openDatabase(
      { dialect: "postgres", url: `postgres://root@127.0.0.1:${port}/stalled` },
      { poolSize: 1, lockTimeoutMs: 1000 },
    );
    try {
      const readiness = readinessOf(stalled, new NoCache(), 300);
      const tooLate = sleep(3000).then(() => "no answer within 3 s");
      assert.deepEqual(await Promise.race([readiness(), tooLate]), {
        ready: false,
        database: "unreachable",
        cache: { kind: "off", available: true },
      });
    } finally {
      for (const socket of sockets) {
        socket.destroy();
      }
      silent.close();
      await stalled.destroy().catch(() => undefined);
    }
  });

  it("exposes Prometheus metrics: requests by route and status, outcomes, cache, retries, pool", async () => {
    const body = { email: "metrics@hillvalley.edu", phoneNumber: "5559000" };
    await postIdentify(running.url, body); // created
    await postIdentify(running.url, body); // repeat: cached (published by the write)
    await postIdentify(running.url, { email: "metrics@hillvalley.edu", phoneNumber: "5559001" });
    await postIdentify(running.url, {}); // 400
    const response = await fetch(`${running.url}/metrics`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type") ?? "", /^text\/plain/);
    const text = await response.text();
    const value = (pattern: RegExp) => Number(pattern.exec(text)?.[1] ?? NaN);
    assert.ok(
      value(/http_requests_total\{route="\/identify",method="POST",status="200"\} (\d+)/) >= 3,
    );
    assert.ok(
      value(/http_requests_total\{route="\/identify",method="POST",status="400"\} (\d+)/) >= 1,
    );
    assert.match(
      text,
      /http_request_duration_seconds_bucket\{le="0.005",route="\/identify",method="POST",status="200"\}/,
    );
    assert.ok(value(/identify_outcomes_total\{outcome="created",source="database"\} (\d+)/) >= 1);
    assert.ok(value(/identify_outcomes_total\{outcome="unchanged",source="cache"\} (\d+)/) >= 1);
    assert.ok(
      value(/identify_outcomes_total\{outcome="secondary_added",source="database"\} (\d+)/) >= 1,
    );
    assert.ok(value(/cache_operations_total\{result="hit"\} (\d+)/) >= 1);
    assert.ok(value(/cache_operations_total\{result="publication"\} (\d+)/) >= 2);
    assert.match(text, /db_transaction_retries_total\{reason="deadlock"\} 0/);
    assert.match(text, /db_pool_connections\{state="waiting"\} 0/);
    // SQLite's group commit: every write so far committed in some batch.
    const writeBatches = value(/db_sqlite_batches_total\{kind="write"\} (\d+)/);
    assert.ok(writeBatches >= 1);
    assert.ok(value(/db_sqlite_batched_transactions_total\{kind="write"\} (\d+)/) >= writeBatches);
  });

  it("publishes an OpenAPI 3.1 document with every status and its masked message", async () => {
    const response = await fetch(`${running.url}/openapi.json`);
    assert.equal(response.status, 200);
    const document = (await response.json()) as OpenApi;
    assert.equal(document.openapi, "3.1.0");
    const identify = document.paths["/identify"]?.post;
    assert.ok(identify);
    assert.deepEqual(Object.keys(identify.responses).sort(), ["200", "400", "413", "500"]);
    const text = JSON.stringify(identify.responses);
    assert.match(text, /Invalid CSRF token\./);
    assert.match(text, /Request timestamp invalid\./);
    assert.match(text, /lorraine@hillvalley\.edu/);
    for (const path of ["/healthz", "/readyz", "/metrics"]) {
      assert.ok(document.paths[path]?.get, path);
    }
    assert.deepEqual(Object.keys(document.paths["/readyz"]?.get?.responses ?? {}).sort(), [
      "200",
      "503",
    ]);
  });

  it("serves Swagger UI at /docs", async () => {
    const response = await fetch(`${running.url}/docs/`);
    assert.equal(response.status, 200);
    assert.match(await response.text(), /swagger-ui/i);
  });
});
