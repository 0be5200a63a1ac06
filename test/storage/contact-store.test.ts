import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase, parseDatabaseUrl } from "../../src/storage/database.js";
import { DatabaseError } from "../../src/storage/errors.js";

describe("SqlContactStore write transactions", () => {
  // The read before a write can succeed and the pool then fail to give a connection (a failover,
  // a pool timeout): that is a database failure like any other (the masked 500 of the database),
  // not an unknown error.
  for (const url of ["postgres://root@127.0.0.1:1/nowhere", "mysql://root@127.0.0.1:1/nowhere"]) {
    const target = parseDatabaseUrl(url);
    it(`rejects with a DatabaseError when no connection can be had (${target.dialect})`, async () => {
      const database = openDatabase(target, { poolSize: 1, lockTimeoutMs: 1000 });
      let worked = false;
      try {
        const store = new SqlContactStore(database, {
          maxAttempts: 1,
          baseDelayMs: 1,
          maxDelayMs: 1,
        });
        await assert.rejects(
          store.withLockedTransaction(["email:a@example.com"], () => {
            worked = true;
            return Promise.resolve();
          }),
          (error: unknown) =>
            error instanceof DatabaseError && error.message.startsWith("acquiring a connection"),
        );
        assert.equal(worked, false);
      } finally {
        await database.destroy();
      }
    });
  }
});
