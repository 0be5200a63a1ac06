import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { sql } from "kysely";
import { openDatabase } from "../../src/storage/database.js";
import {
  createTestDatabase,
  holdTransaction,
  serverDialectsUnderTest,
} from "../support/databases.js";

for (const dialect of serverDialectsUnderTest()) {
  describe(`the ${dialect} connection pool`, () => {
    it("fails a statement that waits longer than connectionTimeoutMs for a free connection", async () => {
      // While the server stalls, every connection stays busy: a request must not wait for one
      // without a bound (mysql2's pool has none of its own), nor run its work once it is back.
      const test = await createTestDatabase(dialect);
      const database = openDatabase(test.target, {
        poolSize: 1,
        lockTimeoutMs: 1000,
        connectionTimeoutMs: 300,
      });
      let release = (): Promise<void> => Promise.resolve();
      try {
        release = await holdTransaction(database, (trx) => sql`select 1`.execute(trx));
        const waited = sql`select 2`.execute(database.db).then(
          () => "answered",
          (error: unknown) => String(error),
        );
        const outcome = await Promise.race([
          waited,
          sleep(3000).then(() => "still waiting after 3 s"),
        ]);
        assert.match(
          outcome,
          /no free connection within 300 ms|timeout exceeded when trying to connect/,
        );
        await release();
        // The connection the abandoned wait was given went back to the pool: it serves again.
        const { rows } = await sql<{ x: number }>`select 3 as x`.execute(database.db);
        assert.equal(Number(rows[0]?.x), 3);
      } finally {
        await release();
        await database.destroy();
        await test.drop();
      }
    });
  });
}
