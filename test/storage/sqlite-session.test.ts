import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import SqliteDatabase from "better-sqlite3";
import { DatabaseError } from "../../src/storage/errors.js";
import { SqliteSession } from "../../src/storage/sqlite-session.js";

const insert = (value: string) => ({
  sql: "insert into item (value) values (?)",
  parameters: [value],
});
const values = { sql: "select value from item order by id", parameters: [] };

describe("SqliteSession (group commit)", () => {
  let dir: string;
  let file: SqliteDatabase.Database;
  let session: SqliteSession;
  let statements: string[];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "idr-session-"));
    file = new SqliteDatabase(join(dir, "session.db"));
    file.pragma("journal_mode = WAL");
    file.pragma("foreign_keys = ON");
    file.exec(`
      create table parent (id integer primary key);
      create table item (
        id integer primary key,
        value text not null unique,
        parent integer references parent (id) deferrable initially deferred
      );`);
    statements = [];
    session = new SqliteSession(
      (sql) => file.prepare(sql),
      (sql) => statements.push(sql),
    );
  });

  afterEach(async () => {
    await session.flush();
    file.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** What another connection to the file sees: committed rows only. */
  function committed(): string[] {
    const other = new SqliteDatabase(join(dir, "session.db"), { readonly: true });
    try {
      return (other.prepare("select value from item order by id").all() as { value: string }[]).map(
        (row) => row.value,
      );
    } finally {
      other.close();
    }
  }

  it("commits the write transactions queued in one turn together, and settles them after COMMIT", async () => {
    const settled: string[] = [];
    const writes = ["a", "b", "c", "d"].map((value) =>
      session
        .write(() => {
          session.run(insert(value));
          return Promise.resolve(value);
        })
        .then((result) => {
          // Acknowledged only once committed: another connection sees the row already.
          assert.ok(committed().includes(value));
          settled.push(result);
        }),
    );
    await Promise.all(writes);
    assert.deepEqual(settled, ["a", "b", "c", "d"]);
    assert.deepEqual(statements, [
      "begin immediate",
      ...Array<string>(4).fill(insert("").sql),
      "commit",
    ]);
    assert.deepEqual(session.stats(), {
      read: { batches: 0, transactions: 0 },
      write: { batches: 1, transactions: 4 },
    });
  });

  it("rolls back a batch when one transaction fails: that one rejects, the others run again and commit", async () => {
    const attempts = new Map<string, number>();
    const write = (value: string) =>
      session.write(() => {
        attempts.set(value, (attempts.get(value) ?? 0) + 1);
        session.run(insert(value));
        return Promise.resolve(value);
      });
    const [first, second, third] = await Promise.allSettled([write("a"), write("a"), write("b")]);
    assert.deepEqual(first, { status: "fulfilled", value: "a" });
    assert.equal(second.status, "rejected");
    assert.match(String(second.reason), /UNIQUE constraint/);
    assert.deepEqual(third, { status: "fulfilled", value: "b" });
    assert.deepEqual(committed(), ["a", "b"]);
    // "a" ran in the failed batch and again in the next one; "b" was queued behind the failure.
    assert.deepEqual(
      [...attempts],
      [
        ["a", 3],
        ["b", 1],
      ],
    );
  });

  it("when the COMMIT of a batch fails, runs each transaction alone: only the one at fault fails", async () => {
    // A deferred foreign key is checked at COMMIT.
    const [ok, orphan] = await Promise.allSettled([
      session.write(() => Promise.resolve(session.run(insert("ok")))),
      session.write(() =>
        Promise.resolve(
          session.run({
            sql: "insert into item (value, parent) values (?, ?)",
            parameters: ["orphan", 42],
          }),
        ),
      ),
    ]);
    assert.deepEqual(ok, { status: "fulfilled", value: [] });
    assert.equal(orphan.status, "rejected");
    assert.ok(orphan.reason instanceof DatabaseError);
    assert.match(orphan.reason.message, /^committing: FOREIGN KEY constraint failed/);
    assert.deepEqual(committed(), ["ok"]);
    assert.deepEqual(
      statements.filter((sql) => /^(begin|commit|rollback)/.test(sql)),
      [
        // both together: COMMIT fails
        "begin immediate",
        "commit",
        "rollback",
        // each alone
        "begin immediate",
        "commit",
        "begin immediate",
        "commit",
        "rollback",
      ],
    );
    // The connection is usable again.
    await session.write(() => Promise.resolve(session.run(insert("after"))));
    assert.deepEqual(committed(), ["ok", "after"]);
  });

  it("reads in batches of their own, ahead of the writes and without the write lock", async () => {
    await session.write(() => Promise.resolve(session.run(insert("a"))));
    statements = [];
    const [, read] = await Promise.all([
      session.write(() => Promise.resolve(session.run(insert("b")))),
      session.read(() => session.run(values)),
    ]);
    assert.deepEqual(read, [{ value: "a" }]);
    assert.deepEqual(statements, [
      "begin",
      values.sql,
      "commit",
      "begin immediate",
      insert("").sql,
      "commit",
    ]);
  });

  it("while paused (a checkpoint elsewhere), runs reads and holds the writes until resumed", async () => {
    await session.write(() => Promise.resolve(session.run(insert("a"))));
    await session.pause();
    let wrote = false;
    const write = session
      .write(() => Promise.resolve(session.run(insert("b"))))
      .then(() => (wrote = true));
    // One read queued with the write (its batch runs first), one once the drain waits with only
    // the write left.
    const before = session.read(() => session.run(values));
    await new Promise((resolve) => setImmediate(resolve));
    const late = await session.read(() => session.run(values));
    assert.deepEqual(await before, [{ value: "a" }]);
    assert.deepEqual(late, [{ value: "a" }]);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(wrote, false, "a write ran while paused");
    assert.deepEqual(committed(), ["a"]);
    session.resume();
    await write;
    assert.deepEqual(committed(), ["a", "b"]);
  });

  it("waits for another process's write lock off the event loop, reads going on, up to its timeout", async () => {
    // The connection's own busy_timeout waits inside BEGIN IMMEDIATE, holding the event loop:
    // nothing else was answered while another process held the lock.
    file.pragma("busy_timeout = 5000");
    const waiting = new SqliteSession((sql) => file.prepare(sql), undefined, 1000);
    await waiting.write(() => Promise.resolve(waiting.run(insert("before"))));
    const other = new SqliteDatabase(join(dir, "session.db"));
    try {
      other.exec("begin immediate");
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 10);
      const written = waiting.write(() => Promise.resolve(waiting.run(insert("held"))));
      const read = await waiting.read(() => waiting.run(values));
      assert.deepEqual(read, [{ value: "before" }], "a read goes on while the write waits");
      await new Promise((resolve) => setTimeout(resolve, 300));
      clearInterval(ticker);
      assert.ok(ticks >= 10, `the event loop ran ${ticks} times in 300 ms`);
      other.exec("commit");
      await written;
      assert.deepEqual(committed(), ["before", "held"]);

      // Held past the timeout: the write fails as busy (the contact store's retries take it).
      other.exec("begin immediate");
      await assert.rejects(
        waiting.write(() => Promise.resolve(waiting.run(insert("late")))),
        (error) =>
          error instanceof DatabaseError && /SQLITE_BUSY|locked/i.test(String(error.cause)),
      );
      other.exec("rollback");
      await waiting.write(() => Promise.resolve(waiting.run(insert("after"))));
      assert.deepEqual(committed(), ["before", "held", "after"]);
    } finally {
      if (other.inTransaction) {
        other.exec("rollback");
      }
      other.close();
      await waiting.flush();
    }
  });

  it("rejects transactions once closed", async () => {
    session.close();
    await assert.rejects(
      session.write(() => Promise.resolve(session.run(insert("late")))),
      (error) => error instanceof DatabaseError && error.message === "the database is closed",
    );
    assert.deepEqual(committed(), []);
  });
});

describe("SqliteSession.run's rows (built from raw rows)", () => {
  let file: SqliteDatabase.Database;
  let prepared: Map<string, SqliteDatabase.Statement>;
  let session: SqliteSession;

  beforeEach(() => {
    file = new SqliteDatabase(":memory:");
    file.exec(`
      create table item (id integer primary key, value text, amount real, data blob);
      insert into item values (1, 'a', 1.5, x'00ff'), (2, null, null, null), (3, 'c', 3, x'');`);
    // One statement per text, shared, as the service's statement cache shares them with Kysely.
    prepared = new Map();
    session = new SqliteSession((sql) => {
      let statement = prepared.get(sql);
      if (statement === undefined) {
        statement = file.prepare(sql);
        prepared.set(sql, statement);
      }
      return statement;
    });
  });

  afterEach(() => {
    file.close();
  });

  it("are the objects better-sqlite3 makes, every type and a repeated column name included", () => {
    const texts = [
      "select id, value, amount, data from item order by id",
      // Two columns of one name: the last one's value, as better-sqlite3 gives.
      "select id, value as v, amount as v from item order by id",
      "select * from item where id = ?",
      "select value from item where id > ?",
    ];
    for (const sql of texts) {
      const parameters = sql.includes("?") ? [1] : [];
      const expected = file.prepare(sql).all(parameters);
      assert.deepEqual(session.run({ sql, parameters }), expected, sql);
      // Again, with the names taken at the first run.
      assert.deepEqual(session.run({ sql, parameters }), expected, sql);
      assert.ok(expected.length > 0, sql);
    }
    assert.deepEqual(session.run({ sql: "select id from item where id > ?", parameters: [9] }), []);
    // A write that returns rows (the service's INSERT of a contact does).
    assert.deepEqual(
      session.run({
        sql: "insert into item (value) values (?) returning id, value",
        parameters: ["z"],
      }),
      [{ id: 4, value: "z" }],
    );
  });

  it("leave the shared statement as it was: others still get objects, after a failure too", () => {
    const sql = "select id, value from item where id = ?";
    session.run({ sql, parameters: [1] });
    assert.deepEqual(prepared.get(sql)?.all(1), [{ id: 1, value: "a" }]);
    // A parameter SQLite cannot bind: the call fails, raw mode is still undone.
    const failing = "select id from item where value = ?";
    assert.throws(() => session.run({ sql: failing, parameters: [{}] }));
    assert.deepEqual(prepared.get(failing)?.all("c"), [{ id: 3 }]);
  });

  it("follow a statement that selects * when its table gains a column", () => {
    const sql = "select * from item where id = ?";
    assert.deepEqual(session.run({ sql, parameters: [3] }), [
      { id: 3, value: "c", amount: 3, data: Buffer.alloc(0) },
    ]);
    file.exec("alter table item add column note text default 'n'");
    assert.deepEqual(session.run({ sql, parameters: [3] }), [
      { id: 3, value: "c", amount: 3, data: Buffer.alloc(0), note: "n" },
    ]);
  });
});
