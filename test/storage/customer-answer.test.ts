import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CompiledQuery } from "kysely";
import { NoCache } from "../../src/cache/customer-cache.js";
import type { IdentifyRequest } from "../../src/domain/contact.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import type { Database } from "../../src/storage/database.js";
import { startApp } from "../support/app.js";
import type { RunningApp } from "../support/app.js";
import {
  allContacts,
  createTestDatabase,
  keptAnswers,
  openMigrated,
} from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";
import { expectedAnswer, keptAnswerViolations } from "../support/invariants.js";

/**
 * SQLite keeps each customer's answer (migration 0003): every write transaction stores it, and
 * triggers drop it when anything changes the customer's rows.
 */
describe("kept answers on sqlite", () => {
  let test: TestDatabase;
  let database: Database;
  let running: RunningApp;
  let service: IdentifyService;
  let seq = 0;

  before(async () => {
    test = await createTestDatabase("sqlite");
    database = await openMigrated(test);
    // No cache: every repeat reaches the database.
    running = await startApp(database, { cache: new NoCache() });
    service = new IdentifyService(new SqlContactStore(database), new NoCache());
  });

  after(async () => {
    await running.close();
    await database.destroy();
    await test.drop();
  });

  function fresh(): { email: string; phone: string } {
    seq++;
    return { email: `kept${seq}@example.com`, phone: `+1555${String(seq).padStart(6, "0")}` };
  }

  async function post(body: unknown): Promise<{ text: string; type: string | null }> {
    const response = await fetch(`${running.url}/identify`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    assert.equal(response.status, 200);
    return { text: await response.text(), type: response.headers.get("content-type") };
  }

  /** Every kept answer equals the answer computed from the rows; none for a customer gone. */
  async function assertKeptAnswersMatchRows(): Promise<Map<number, string>> {
    const kept = await keptAnswers(database);
    assert.deepEqual(keptAnswerViolations(await allContacts(database), kept), []);
    return kept;
  }

  const sqliteNow = () => new Date().toISOString();

  it("answers a repeat with the very bytes its write answered, from the kept answer", async () => {
    const a = fresh();
    const b = fresh();
    const written = await post({ email: a.email, phoneNumber: a.phone });
    const secondary = await post({ email: b.email, phoneNumber: a.phone });
    const repeat = await post({ email: b.email, phoneNumber: a.phone });
    assert.equal(repeat.text, secondary.text);
    assert.equal(repeat.type, secondary.type);
    assert.equal(repeat.type, "application/json; charset=utf-8");
    assert.notEqual(repeat.text, written.text);

    const result = await service.identify({ email: a.email, phoneNumber: null });
    assert.equal(result.outcome, "unchanged");
    assert.equal(result.json, repeat.text, "answered from the kept answer");
    assert.deepEqual(result.customer, JSON.parse(repeat.text));
    await assertKeptAnswersMatchRows();
  });

  it("keeps the winner's answer after a merge and drops the merged customer's", async () => {
    const a = fresh();
    const c = fresh();
    const older = JSON.parse((await post({ email: a.email, phoneNumber: a.phone })).text) as {
      primaryContactId: number;
    };
    const newer = JSON.parse((await post({ email: c.email, phoneNumber: c.phone })).text) as {
      primaryContactId: number;
    };
    assert.ok((await keptAnswers(database)).has(newer.primaryContactId));
    const merged = await post({ email: a.email, phoneNumber: c.phone });
    const kept = await assertKeptAnswersMatchRows();
    assert.equal(kept.get(older.primaryContactId), merged.text);
    assert.equal(kept.has(newer.primaryContactId), false);
    const viaMerged = await service.identify({ email: c.email, phoneNumber: null });
    assert.equal(viaMerged.json, merged.text);
  });

  it("drops a customer's answer when its rows change behind the service, and keeps it again", async () => {
    const a = fresh();
    const b = fresh();
    const first = await service.identify({ email: a.email, phoneNumber: a.phone });
    const second = await service.identify({ email: b.email, phoneNumber: a.phone });
    const primaryId = first.customer.primaryContactId;
    const secondaryId = second.customer.secondaryContactIds[0];
    assert.ok(secondaryId !== undefined);
    assert.ok((await keptAnswers(database)).has(primaryId));

    // A soft-delete by hand.
    await database.db
      .updateTable("Contact")
      .set({ deletedAt: sqliteNow() })
      .where("id", "=", secondaryId)
      .execute();
    assert.equal((await keptAnswers(database)).has(primaryId), false, "dropped by the trigger");
    const before = await allContacts(database);
    const read = await service.identify({ email: a.email, phoneNumber: a.phone });
    assert.equal(read.json, null, "read from the rows");
    assert.deepEqual(read.customer, expectedAnswer(before, primaryId));
    assert.deepEqual(read.customer.emails, [a.email]);
    assert.deepEqual(await allContacts(database), before, "no row written");
    const kept = await assertKeptAnswersMatchRows();
    assert.equal(kept.get(primaryId), JSON.stringify(read.customer), "kept again");
    const again = await service.identify({ email: a.email, phoneNumber: a.phone });
    assert.equal(again.json, JSON.stringify(read.customer));

    // An edit by hand, then a delete by hand.
    await database.db
      .updateTable("Contact")
      .set({ phoneNumber: "+19990000001" })
      .where("id", "=", primaryId)
      .execute();
    assert.equal((await keptAnswers(database)).has(primaryId), false);
    const edited = await service.identify({ email: a.email, phoneNumber: null });
    assert.deepEqual(edited.customer.phoneNumbers, ["+19990000001"]);
    assert.ok((await keptAnswers(database)).has(primaryId));
    await database.db.deleteFrom("Contact").where("id", "=", secondaryId).execute();
    assert.equal((await keptAnswers(database)).has(primaryId), false);
    await assertKeptAnswersMatchRows();
  });

  it("answers customers written without the service (no kept answer) from their rows", async () => {
    const a = fresh();
    const at = sqliteNow();
    const row = await database.db
      .insertInto("Contact")
      .values({
        email: a.email,
        phoneNumber: a.phone,
        linkedId: null,
        linkPrecedence: "primary",
        createdAt: at,
        updatedAt: at,
      })
      .returning("id")
      .executeTakeFirstOrThrow();
    assert.equal((await keptAnswers(database)).has(row.id), false);
    const request: IdentifyRequest = { email: a.email, phoneNumber: a.phone };
    const before = await allContacts(database);
    const first = await service.identify(request);
    assert.equal(first.outcome, "unchanged");
    assert.equal(first.json, null);
    assert.deepEqual(first.customer, expectedAnswer(before, row.id));
    assert.deepEqual(await allContacts(database), before);
    const second = await service.identify(request);
    assert.equal(second.json, JSON.stringify(first.customer));
  });

  it("answers a request with new information or a bridge from a transaction, never the kept answer", async () => {
    const a = fresh();
    const b = fresh();
    const c = fresh();
    await service.identify({ email: a.email, phoneNumber: a.phone });
    await service.identify({ email: c.email, phoneNumber: c.phone });
    const added = await service.identify({ email: b.email, phoneNumber: a.phone });
    assert.equal(added.outcome, "secondary_added");
    assert.equal(added.json, null);
    const bridged = await service.identify({ email: a.email, phoneNumber: c.phone });
    assert.equal(bridged.outcome, "merged");
    assert.equal(bridged.json, null);
    await assertKeptAnswersMatchRows();
  });

  it("drops and finds answers by primary key (no scan of CustomerAnswer)", async () => {
    const triggers = await database.db.executeQuery<{ sql: string }>(
      CompiledQuery.raw(
        "select sql from sqlite_master where type = 'trigger' and tbl_name = 'Contact' order by name",
      ),
    );
    assert.equal(triggers.rows.length, 3);
    for (const { sql } of triggers.rows) {
      const body = /begin (.*); end$/is.exec(sql)?.[1];
      assert.ok(body !== undefined, sql);
      const statement = body.replace(/\b(new|old)\."(linkedId|id)"/g, "?");
      const parameters = [...statement.matchAll(/\?/g)].map(() => 1);
      const plan = await database.db.executeQuery<{ detail: string }>(
        CompiledQuery.raw(`explain query plan ${statement}`, parameters),
      );
      const details = plan.rows.map((r) => r.detail).join("; ");
      assert.match(details, /SEARCH CustomerAnswer USING INTEGER PRIMARY KEY/, details);
      assert.doesNotMatch(details, /SCAN CustomerAnswer/, details);
    }
  });
});
