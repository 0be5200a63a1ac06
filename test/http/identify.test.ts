import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { NoCache } from "../../src/cache/customer-cache.js";
import type { Database } from "../../src/storage/database.js";
import { startApp } from "../support/app.js";
import type { RunningApp } from "../support/app.js";
import {
  allContacts,
  createTestDatabase,
  dialectsUnderTest,
  openMigrated,
} from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";
import { postIdentify } from "../support/server.js";

for (const dialect of dialectsUnderTest()) {
  describe(`POST /identify on ${dialect}`, () => {
    let test: TestDatabase;
    let database: Database;
    let running: RunningApp;

    before(async () => {
      test = await createTestDatabase(dialect);
      database = await openMigrated(test);
      running = await startApp(database);
    });

    after(async () => {
      await running.close();
      await database.destroy();
      await test.drop();
    });

    async function identify(body: unknown) {
      const response = await postIdentify(running.url, body);
      assert.equal(response.status, 200, JSON.stringify(response.body));
      return response.body;
    }

    it("adds a secondary for new information and answers repeats without writing (worked example 1)", async () => {
      const first = await identify({ email: "lorraine@hillvalley.edu", phoneNumber: "123456" });
      assert.deepEqual(first, {
        primaryContactId: 1,
        emails: ["lorraine@hillvalley.edu"],
        phoneNumbers: ["123456"],
        secondaryContactIds: [],
      });
      const expected = {
        primaryContactId: 1,
        emails: ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"],
        phoneNumbers: ["123456"],
        secondaryContactIds: [2],
      };
      assert.deepEqual(
        await identify({ email: "mcfly@hillvalley.edu", phoneNumber: "123456" }),
        expected,
      );
      const before = await allContacts(database);
      assert.equal(before.length, 2);
      assert.deepEqual(
        before.map((r) => [r.id, r.email, r.phoneNumber, r.linkedId, r.linkPrecedence]),
        [
          [1, "lorraine@hillvalley.edu", "123456", null, "primary"],
          [2, "mcfly@hillvalley.edu", "123456", 1, "secondary"],
        ],
      );
      for (const body of [
        { email: null, phoneNumber: "123456" },
        { email: "lorraine@hillvalley.edu", phoneNumber: null },
        { email: "mcfly@hillvalley.edu", phoneNumber: null },
        { email: "mcfly@hillvalley.edu", phoneNumber: 123456 },
        { phoneNumber: 123456 },
        { email: "  MCFLY@HillValley.edu " },
      ]) {
        assert.deepEqual(await identify(body), expected, JSON.stringify(body));
      }
      assert.deepEqual(await allContacts(database), before, "repeats write nothing");
    });

    it("merges two customers under the older primary without a new row (worked example 2)", async () => {
      const george = (await identify({
        email: "george@hillvalley.edu",
        phoneNumber: "919191",
      })) as { primaryContactId: number };
      const biff = (await identify({
        email: "biffsucks@hillvalley.edu",
        phoneNumber: "717171",
      })) as { primaryContactId: number };
      const countBefore = (await allContacts(database)).length;

      const merged = await identify({ email: "george@hillvalley.edu", phoneNumber: "717171" });
      const expected = {
        primaryContactId: george.primaryContactId,
        emails: ["george@hillvalley.edu", "biffsucks@hillvalley.edu"],
        phoneNumbers: ["919191", "717171"],
        secondaryContactIds: [biff.primaryContactId],
      };
      assert.deepEqual(merged, expected);

      const rows = await allContacts(database);
      assert.equal(rows.length, countBefore, "a bridging request creates no row");
      const biffRow = rows.find((r) => r.id === biff.primaryContactId);
      assert.equal(biffRow?.linkPrecedence, "secondary");
      assert.equal(biffRow.linkedId, george.primaryContactId);
      assert.ok(biffRow.updatedAt >= biffRow.createdAt);
      assert.deepEqual(await identify({ phoneNumber: "717171" }), expected);
      assert.deepEqual(await identify({ email: "biffsucks@hillvalley.edu" }), expected);
    });

    it("moves the newer customer's secondaries under the older primary: no chains", async () => {
      const older = (await identify({ email: "doc@hillvalley.edu", phoneNumber: "1985000" })) as {
        primaryContactId: number;
      };
      await identify({ email: "emmett@hillvalley.edu", phoneNumber: "1985000" });
      const newer = (await identify({ email: "marty@hillvalley.edu", phoneNumber: "1955000" })) as {
        primaryContactId: number;
      };
      await identify({ email: "marty@hillvalley.edu", phoneNumber: "1955111" });
      await identify({ email: "calvin@hillvalley.edu", phoneNumber: "1955111" });

      const merged = (await identify({
        email: "emmett@hillvalley.edu",
        phoneNumber: "1955111",
      })) as {
        primaryContactId: number;
        emails: string[];
        phoneNumbers: string[];
        secondaryContactIds: number[];
      };
      assert.equal(merged.primaryContactId, older.primaryContactId);
      assert.deepEqual(merged.emails, [
        "doc@hillvalley.edu",
        "emmett@hillvalley.edu",
        "marty@hillvalley.edu",
        "calvin@hillvalley.edu",
      ]);
      assert.deepEqual(merged.phoneNumbers, ["1985000", "1955000", "1955111"]);
      assert.equal(merged.secondaryContactIds.length, 4);
      assert.ok(merged.secondaryContactIds.includes(newer.primaryContactId));

      const rows = await allContacts(database);
      for (const id of merged.secondaryContactIds) {
        const row = rows.find((r) => r.id === id);
        assert.equal(row?.linkedId, older.primaryContactId, `row ${id} points at the winner`);
        assert.equal(row.linkPrecedence, "secondary");
      }
    });

    it("treats soft-deleted rows as invisible", async () => {
      // Rows are soft-deleted behind the service's back here, so no cache may remember them.
      const uncached = await startApp(database, { cache: new NoCache() });
      const identify = async (body: unknown) => {
        const response = await postIdentify(uncached.url, body);
        assert.equal(response.status, 200, JSON.stringify(response.body));
        return response.body;
      };
      const first = (await identify({ email: "ghost@hillvalley.edu", phoneNumber: "4040404" })) as {
        primaryContactId: number;
      };
      await database.db
        .updateTable("Contact")
        .set({ deletedAt: dialect === "sqlite" ? new Date().toISOString() : new Date() })
        .where("id", "=", first.primaryContactId)
        .execute();
      const again = (await identify({ email: "ghost@hillvalley.edu", phoneNumber: "4040404" })) as {
        primaryContactId: number;
      };
      assert.notEqual(again.primaryContactId, first.primaryContactId);
      assert.deepEqual(again, {
        primaryContactId: again.primaryContactId,
        emails: ["ghost@hillvalley.edu"],
        phoneNumbers: ["4040404"],
        secondaryContactIds: [],
      });
      await uncached.close();
    });
  });
}
