import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { readMergeHistory } from "../../src/storage/merge-log.repository.js";
import type { MergeKind } from "../../src/storage/schema.js";
import { dialectsUnderTest, migratedDatabaseForSuite } from "../support/databases.js";

for (const dialect of dialectsUnderTest()) {
  describe(`the merge log on ${dialect}`, () => {
    const suite = migratedDatabaseForSuite(dialect);

    /** Writes a log row directly, as an older or skewed writer could have. */
    async function log(winnerId: number, mergedId: number, kind: MergeKind, at: string) {
      const createdAt = dialect === "sqlite" ? new Date(at).toISOString() : new Date(at);
      await suite.database.db
        .insertInto("ContactMerge")
        .values({ winnerId, mergedId, kind, email: null, phoneNumber: "123456", createdAt })
        .execute();
    }

    it("refuses a row that merges a customer into itself, or of an unknown kind", async () => {
      await assert.rejects(log(7, 7, "bridge", "2026-01-01T00:00:00Z"));
      await assert.rejects(log(7, 8, "other" as MergeKind, "2026-01-01T00:00:00Z"));
      const rows = await suite.database.db.selectFrom("ContactMerge").selectAll().execute();
      assert.deepEqual(rows, []);
    });

    it("lists the merges in the order they were logged, whatever the writers' clocks said", async () => {
      // 20 absorbed 21 (whose writer's clock ran late), then 10 absorbed 20; 21 had absorbed 22.
      await log(21, 22, "bridge", "2026-01-01T00:00:09Z");
      await log(20, 21, "bridge", "2026-01-01T00:00:05Z");
      await log(10, 20, "promotion", "2026-01-01T00:00:01Z");
      await log(11, 12, "bridge", "2026-01-01T00:00:00Z");
      const history = await readMergeHistory(suite.database.db, [10]);
      assert.deepEqual(
        history.map((merge) => [merge.winnerId, merge.mergedId, merge.kind, merge.at]),
        [
          [21, 22, "bridge", "2026-01-01T00:00:09.000Z"],
          [20, 21, "bridge", "2026-01-01T00:00:05.000Z"],
          [10, 20, "promotion", "2026-01-01T00:00:01.000Z"],
        ],
      );
      // A customer reached twice (here through a cycle) is read once.
      await log(22, 10, "promotion", "2026-01-01T00:00:10Z");
      assert.equal((await readMergeHistory(suite.database.db, [10, 22])).length, 4);
    });
  });
}
