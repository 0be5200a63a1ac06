import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import Sqlite from "better-sqlite3";
import { openDatabase, WAL_SIZE_LIMIT_BYTES } from "../../src/storage/database.js";
import { startCheckpointer } from "../../src/storage/sqlite-checkpointer.js";
import { SqliteSession } from "../../src/storage/sqlite-session.js";
import { databaseForSuite } from "../support/databases.js";

describe("SQLite checkpointer thread", () => {
  const suite = databaseForSuite("sqlite", (test) =>
    openDatabase(test.target, { poolSize: 1, lockTimeoutMs: 5000 }),
  );

  /**
   * Frames in the WAL now: mxFrame of the WAL-index header, at byte 16 of the -shm file (SQLite's
   * file format, section "WAL-Index Format"). Read from the file, not by a checkpoint, which would
   * do the thread's work.
   */
  function walFrames(): number {
    const { target } = suite.test;
    if (target.dialect !== "sqlite") {
      throw new Error("SQLite only");
    }
    return readFileSync(`${target.path}-shm`).readUInt32LE(16);
  }

  /** Creates `table`, of one blob column, and answers the session of the suite's database. */
  async function blobTable(table: string) {
    const session = suite.database.sqlite;
    assert.ok(session !== null);
    await session.write(() =>
      Promise.resolve(session.run({ sql: `create table ${table} (data blob)`, parameters: [] })),
    );
    return session;
  }

  /** One write transaction of `count` random blobs of `bytes` each into `table`. */
  function insertBlobs(session: SqliteSession, table: string, count: number, bytes: number) {
    return session.write(() => {
      for (let j = 0; j < count; j++) {
        session.run({
          sql: `insert into ${table} (data) values (?)`,
          parameters: [randomBytes(bytes)],
        });
      }
      return Promise.resolve();
    });
  }

  it("reports why it failed, with SQLite's code, when a checkpoint fails", async () => {
    // SQLite's errors reached the main thread as {code} alone, and the log line had no reason.
    const dir = mkdtempSync(join(tmpdir(), "idr-checkpointer-"));
    const path = join(dir, "not-a-database.db");
    writeFileSync(path, "text, not an SQLite file: every checkpoint of it fails ".repeat(4));
    try {
      const failed = new Promise<Error>((resolve) => {
        const checkpointer = startCheckpointer(new SqliteSession(() => assert.fail("unused")), {
          path,
          synchronous: "normal",
          intervalMs: 10,
          restartFrames: 1000,
          onError: (error) => {
            resolve(error);
            void checkpointer.stop();
          },
        });
      });
      const error = await failed;
      assert.ok(error instanceof Error);
      assert.match(error.message, /^SQLITE_NOTADB: file is not a database$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("checkpoints the WAL and has it restarted, where the connection alone would let it grow", async () => {
    const session = await blobTable("blob");
    // About 3,000 pages in 30 transactions: below the connection's own threshold (4,000), above
    // the thread's (1,000).
    for (let i = 0; i < 30; i++) {
      if (i === 29) {
        assert.ok(walFrames() >= 1000, `only ${walFrames()} frames were written`);
      }
      await insertBlobs(session, "blob", 25, 16000);
    }
    let frames = Number.POSITIVE_INFINITY;
    for (let i = 0; i < 50 && frames > 100; i++) {
      await sleep(100);
      // A small write: it restarts the WAL from the beginning once a checkpoint reached its end.
      await insertBlobs(session, "blob", 1, 1);
      frames = walFrames();
    }
    assert.ok(frames <= 100, `the WAL still holds ${frames} frames`);
  });

  it("cuts the WAL file back once a long read that let it grow has ended", async () => {
    const { target } = suite.test;
    assert.ok(target.dialect === "sqlite");
    const session = await blobTable("grown");
    // Another process's read keeps its snapshot: no checkpoint gets past it, so the WAL grows.
    const reader = new Sqlite(target.path);
    reader.exec("begin");
    reader.prepare("select count(*) from grown").get();
    for (let i = 0; i < 60; i++) {
      await insertBlobs(session, "grown", 100, 4000);
    }
    const grown = statSync(`${target.path}-wal`).size;
    assert.ok(grown > WAL_SIZE_LIMIT_BYTES, `the WAL grew to ${grown} bytes only`);
    reader.exec("commit");
    reader.close();
    let size = grown;
    for (let tries = 0; size > WAL_SIZE_LIMIT_BYTES && tries < 300; tries++) {
      await insertBlobs(session, "grown", 1, 100);
      await sleep(10);
      size = statSync(`${target.path}-wal`).size;
    }
    assert.ok(size <= WAL_SIZE_LIMIT_BYTES, `the WAL file stayed at ${size} bytes`);
  });

  it("has the WAL restarted under steady writes, before the connection's own checkpoint would", async () => {
    const session = await blobTable("steady");
    // Three pages a write, a write every 2 ms or so, 5,000 pages in all: more than the
    // connection's threshold (4,000). Each checkpoint of the thread reaches the end of the WAL, but
    // under writes this steady some commit always comes during it, so no write would restart the
    // WAL unless the thread pauses the writers (before, the WAL grew to 4,000 pages and a COMMIT
    // restarted it).
    let most = 0;
    let pages = 0;
    const end = Date.now() + 15_000;
    while (pages < 5000 && Date.now() < end) {
      await insertBlobs(session, "steady", 3, 4000);
      pages += 3;
      most = Math.max(most, walFrames());
      await sleep(2);
    }
    assert.ok(pages >= 5000, `only ${pages} pages were written`);
    assert.ok(most < 3000, `the WAL grew to ${most} frames`);
  });
});
