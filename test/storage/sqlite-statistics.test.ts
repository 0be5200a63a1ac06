import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import SqliteDatabase from "better-sqlite3";
import { sql } from "kysely";
import { NoCache } from "../../src/cache/customer-cache.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase } from "../../src/storage/database.js";
import { createTestDatabase, openMigrated } from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";

const COMMON = 1;
const RARE = 1950;

/**
 * `ANALYZE` (and `PRAGMA optimize` told to analyze without a limit) writes `sqlite_stat4`, whose
 * samples make SQLite plan each of the service's statements again at every execution. Opening the
 * database drops it, before the service's connection loads them (storage/database.ts).
 */
describe("SQLite statistics", () => {
  let test: TestDatabase;
  let path: string;

  before(async () => {
    test = await createTestDatabase("sqlite");
    if (test.target.dialect !== "sqlite") {
      throw new Error("SQLite only");
    }
    path = test.target.path;
    const database = await openMigrated(test);
    const service = new IdentifyService(new SqlContactStore(database), new NoCache());
    for (let i = 0; i < 20; i++) {
      await service.identify({ email: `stat${i}@example.com`, phoneNumber: `+1555000${i}` });
      await service.identify({ email: `stat${i}b@example.com`, phoneNumber: `+1555000${i}` });
    }
    await database.destroy();
    // A table whose best index depends on the value: the samples make SQLite plan by the value
    // bound, so the plans of a common and a rare value tell whether a connection holds samples.
    const raw = new SqliteDatabase(path);
    raw.exec("create table skew (a integer, b integer)");
    raw.exec("create index skew_a on skew (a)");
    raw.exec("create index skew_b on skew (b)");
    const insert = raw.prepare("insert into skew (a, b) values (?, ?)");
    raw.transaction(() => {
      for (let i = 0; i < 2000; i++) {
        insert.run(i < 1900 ? COMMON : i, i % 50);
      }
    })();
    raw.close();
  });

  after(() => test.drop());

  const SKEW_PLAN = "explain query plan select * from skew where a = ? and b = ?";
  const detail = (row: unknown) => (row as { detail: string }).detail;

  /** The statistics tables in the file, each with its row count. */
  function statistics(work?: (raw: SqliteDatabase.Database) => void): Record<string, number> {
    const raw = new SqliteDatabase(path);
    try {
      work?.(raw);
      const tables = raw
        .prepare("select name from sqlite_schema where name like 'sqlite_stat%' order by name")
        .pluck()
        .all() as string[];
      return Object.fromEntries(
        tables.map((name) => [
          name,
          raw.prepare(`select count(*) from ${name}`).pluck().get() as number,
        ]),
      );
    } finally {
      raw.close();
    }
  }

  it("drops the samples that ANALYZE wrote, keeps sqlite_stat1, and answers as before", async () => {
    const plans: string[] = [];
    const written = statistics((raw) => {
      raw.exec("analyze");
      for (const a of [COMMON, RARE]) {
        plans.push(raw.prepare(SKEW_PLAN).all(a, 7).map(detail).join());
      }
    });
    assert.ok((written.sqlite_stat4 ?? 0) > 0, `no samples written: ${JSON.stringify(written)}`);
    assert.ok((written.sqlite_stat1 ?? 0) > 0);
    // The samples at work: two plans for one statement.
    assert.notEqual(plans[0], plans[1]);

    const database = await openMigrated(test);
    try {
      assert.deepEqual(Object.keys(statistics()), ["sqlite_stat1"]);
      // The service's own connection plans without samples: one plan whatever the value.
      const served: string[] = [];
      for (const a of [COMMON, RARE]) {
        const { rows } = await sql<{ detail: string }>`explain query plan
          select * from skew where a = ${a} and b = ${7}`.execute(database.db);
        served.push(rows.map(detail).join());
      }
      assert.equal(served[0], served[1]);
      const service = new IdentifyService(new SqlContactStore(database), new NoCache());
      const result = await service.identify({ email: "stat3b@example.com", phoneNumber: null });
      assert.equal(result.outcome, "unchanged");
      assert.deepEqual(result.customer.emails, ["stat3@example.com", "stat3b@example.com"]);
      assert.deepEqual(result.customer.phoneNumbers, ["+15550003"]);
      assert.equal(result.customer.secondaryContactIds.length, 1);
    } finally {
      await database.destroy();
    }
  });

  it("leaves the samples to a caller that only reads (the CLI's lookups)", async () => {
    statistics((raw) => raw.exec("analyze"));
    const database = openDatabase(test.target, {
      poolSize: 1,
      lockTimeoutMs: 5000,
      readOnly: true,
    });
    try {
      assert.ok((statistics().sqlite_stat4 ?? 0) > 0);
    } finally {
      await database.destroy();
    }
  });

  it("opens and answers, and says so, when another process holds the write lock past the lock timeout", async () => {
    statistics((raw) => raw.exec("analyze"));
    const holder = new SqliteDatabase(path);
    const kept: Error[] = [];
    let database;
    try {
      holder.exec("begin immediate");
      database = openDatabase(test.target, {
        poolSize: 1,
        lockTimeoutMs: 100,
        onSampleStatisticsKept: (error) => kept.push(error),
      });
    } finally {
      holder.exec("rollback");
      holder.close();
    }
    try {
      assert.equal(kept.length, 1);
      assert.match(kept[0]?.message ?? "", /locked|busy/i);
      assert.ok((statistics().sqlite_stat4 ?? 0) > 0);
      const service = new IdentifyService(new SqlContactStore(database), new NoCache());
      const result = await service.identify({ email: "stat4@example.com", phoneNumber: null });
      assert.equal(result.outcome, "unchanged");
      assert.deepEqual(result.customer.phoneNumbers, ["+15550004"]);
    } finally {
      await database.destroy();
    }
  });
});
