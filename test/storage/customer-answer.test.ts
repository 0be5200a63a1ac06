import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CompiledQuery, Migrator } from "kysely";
import type { Kysely } from "kysely";
import { NoCache } from "../../src/cache/customer-cache.js";
import type { IdentifyRequest } from "../../src/domain/contact.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase } from "../../src/storage/database.js";
import type { Database } from "../../src/storage/database.js";
import { createContact } from "../../src/storage/migrations/0001-create-contact.js";
import { createContactMerge } from "../../src/storage/migrations/0002-create-contact-merge.js";
import { keepMissingAnswers } from "../../src/storage/migrations/0003-create-customer-answer.js";
import { startApp } from "../support/app.js";
import type { RunningApp } from "../support/app.js";
import {
  allContacts,
  createTestDatabase,
  keptAnswers,
  openMigrated,
} from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";
import { postIdentify } from "../support/server.js";
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

  /** A new customer with one secondary, through the service: [primary id, secondary id, phone]. */
  async function customerWithSecondary(): Promise<[number, number, string]> {
    const { email, phone } = fresh();
    const first = await service.identify({ email, phoneNumber: phone });
    const added = await service.identify({ email: fresh().email, phoneNumber: phone });
    const secondaryId = added.customer.secondaryContactIds[0];
    assert.ok(secondaryId !== undefined);
    return [first.customer.primaryContactId, secondaryId, phone];
  }

  async function post(body: unknown): Promise<{ text: string; type: string | null }> {
    const response = await postIdentify(running.url, body);
    assert.equal(response.status, 200);
    return { text: response.text, type: response.headers.get("content-type") };
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

  it("drops a customer's answer when its rows change behind the service, and keeps it on its next write", async () => {
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
    for (let i = 0; i < 2; i++) {
      const read = await service.identify({ email: a.email, phoneNumber: a.phone });
      assert.equal(read.json, null, "read from the rows");
      assert.deepEqual(read.customer, expectedAnswer(before, primaryId));
      assert.deepEqual(read.customer.emails, [a.email]);
    }
    assert.deepEqual(await allContacts(database), before, "no row written");
    assert.equal((await keptAnswers(database)).has(primaryId), false, "a read keeps nothing");
    const c = fresh();
    const written = await service.identify({ email: c.email, phoneNumber: a.phone });
    assert.equal(written.outcome, "secondary_added");
    const kept = await assertKeptAnswersMatchRows();
    assert.equal(kept.get(primaryId), JSON.stringify(written.customer), "kept again");
    const again = await service.identify({ email: a.email, phoneNumber: a.phone });
    assert.equal(again.json, JSON.stringify(written.customer));

    // An edit by hand, then a delete by hand.
    await database.db
      .updateTable("Contact")
      .set({ phoneNumber: "+19990000001" })
      .where("id", "=", primaryId)
      .execute();
    assert.equal((await keptAnswers(database)).has(primaryId), false);
    const edited = await service.identify({ email: a.email, phoneNumber: null });
    assert.equal(edited.json, null);
    assert.deepEqual(edited.customer.phoneNumbers, ["+19990000001", a.phone]);
    await service.identify({ email: fresh().email, phoneNumber: a.phone });
    assert.ok((await keptAnswers(database)).has(primaryId));
    await database.db.deleteFrom("Contact").where("id", "=", secondaryId).execute();
    assert.equal((await keptAnswers(database)).has(primaryId), false);
    await assertKeptAnswersMatchRows();
  });

  it("drops the answers of both customers a row moves between, of a customer gaining a row by hand, and of a replaced row's customer", async () => {
    const x = await service.identify({ email: fresh().email, phoneNumber: fresh().phone });
    const y = await service.identify({ email: fresh().email, phoneNumber: fresh().phone });
    const z = await service.identify({ email: fresh().email, phoneNumber: fresh().phone });
    const [xId, yId, zId] = [x, y, z].map((r) => r.customer.primaryContactId) as [
      number,
      number,
      number,
    ];
    const moved = await service.identify({
      email: fresh().email,
      phoneNumber: x.customer.phoneNumbers[0] ?? "",
    });
    const movedId = moved.customer.secondaryContactIds[0];
    assert.ok(movedId !== undefined);
    const has = async (id: number) => (await keptAnswers(database)).has(id);
    assert.ok((await has(xId)) && (await has(yId)) && (await has(zId)));

    // A row moved from X to Y by hand: both answers go (the UPDATE's old and new customer).
    await database.db
      .updateTable("Contact")
      .set({ linkedId: yId })
      .where("id", "=", movedId)
      .execute();
    assert.equal(await has(xId), false);
    assert.equal(await has(yId), false);
    assert.ok(await has(zId));

    // A secondary inserted by hand into Z.
    const at = sqliteNow();
    await database.db
      .insertInto("Contact")
      .values({
        email: fresh().email,
        phoneNumber: null,
        linkedId: zId,
        linkPrecedence: "secondary",
        createdAt: at,
        updatedAt: at,
      })
      .execute();
    assert.equal(await has(zId), false);

    // INSERT OR REPLACE over a secondary of a customer whose answer is kept.
    const [wId, wSecondary, wPhone] = await customerWithSecondary();
    assert.ok(await has(wId));
    await database.db.executeQuery(
      CompiledQuery.raw(
        `insert or replace into "Contact" ("id", "email", "phoneNumber", "linkedId", "linkPrecedence", "createdAt", "updatedAt") values (?, ?, null, null, 'primary', ?, ?)`,
        [wSecondary, fresh().email, at, at],
      ),
    );
    assert.equal(await has(wId), false, "dropped before the replace");

    // UPDATE OR REPLACE that moves a row's id onto another customer's row.
    const [vId, vSecondary] = await customerWithSecondary();
    const [, uSecondary] = await customerWithSecondary();
    assert.ok(await has(vId));
    await database.db.executeQuery(
      CompiledQuery.raw(`update or replace "Contact" set "id" = ? where "id" = ?`, [
        vSecondary,
        uSecondary,
      ]),
    );
    assert.equal(await has(vId), false, "the replaced row's customer");
    await assertKeptAnswersMatchRows();
    const after = await service.identify({ email: null, phoneNumber: wPhone });
    assert.deepEqual(after.customer.secondaryContactIds, []);
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
    for (let i = 0; i < 2; i++) {
      const read = await service.identify(request);
      assert.equal(read.outcome, "unchanged");
      assert.equal(read.json, null);
      assert.deepEqual(read.customer, expectedAnswer(before, row.id));
    }
    assert.deepEqual(await allContacts(database), before);
    assert.equal((await keptAnswers(database)).has(row.id), false);
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

  it("keeps no answer of a batch that rolled back: the transaction that ran again keeps its own", async () => {
    const session = database.sqlite;
    assert.ok(session !== null);
    const existing = fresh();
    const first = await service.identify({ email: existing.email, phoneNumber: existing.phone });
    const primaryId = first.customer.primaryContactId;
    const doomed = fresh().email;
    await database.db.executeQuery(
      CompiledQuery.raw(
        `create trigger "test_fail_insert" before insert on "Contact" when new."email" = '${doomed}' ` +
          "begin select raise(abort, 'refused by the test'); end",
      ),
    );
    // The statements of the batches, to show the order: the secondary's transaction, with its
    // kept answer, ran first in the batch that the second one's failure rolled back.
    const statements: string[] = [];
    const run = session.run.bind(session);
    session.run = (query) => {
      statements.push(query.sql.split(" ").slice(0, 3).join(" "));
      return run(query);
    };
    try {
      // One turn: both read in one batch, then write in one batch, the secondary first.
      const added = service.identify({ email: fresh().email, phoneNumber: existing.phone });
      const refused = service.identify({ email: doomed, phoneNumber: null });
      await assert.rejects(refused, /refused by the test|writing a plan/);
      const customer = (await added).customer;
      assert.equal(customer.secondaryContactIds.length, 1, "the secondary inserted once");
      const upsert = 'insert into "CustomerAnswer"';
      const firstUpsert = statements.indexOf(upsert);
      const rollback = statements.indexOf("rollback");
      assert.ok(firstUpsert >= 0 && rollback > firstUpsert, statements.join("\n"));
      assert.ok(statements.indexOf(upsert, rollback) > rollback, "kept again when it ran again");
      const kept = await assertKeptAnswersMatchRows();
      assert.equal(kept.get(primaryId), JSON.stringify(customer));
      const repeat = await service.identify({ email: existing.email, phoneNumber: existing.phone });
      assert.equal(repeat.json, JSON.stringify(customer));
    } finally {
      session.run = run;
      await database.db.executeQuery(CompiledQuery.raw('drop trigger "test_fail_insert"'));
    }
  });

  it("keeps, on migrating to 0003, the answers of the customers already stored", async () => {
    const older = await createTestDatabase("sqlite");
    const before = openDatabase(older.target, { poolSize: 1, lockTimeoutMs: 5000 });
    try {
      const migrator = new Migrator({
        db: before.db,
        provider: {
          getMigrations: () =>
            Promise.resolve({
              "0001-create-contact": createContact("sqlite"),
              "0002-create-contact-merge": createContactMerge("sqlite"),
            }),
        },
      });
      assert.equal((await migrator.migrateToLatest()).error, undefined);
      const at = (ms: number) => new Date(Date.UTC(2025, 0, 1) + ms).toISOString();
      const rows: Parameters<typeof insertRows>[1] = [];
      // 600 customers of 1-3 rows (more than one chunk), one with a soft-deleted secondary, one
      // whose primary is soft-deleted (its answer comes from the transaction that promotes).
      /** A stored row created (and last updated) `ms` after the start of 2025. */
      const row = (
        id: number,
        email: string,
        phoneNumber: string,
        linkedId: number | null,
        ms: number,
        deleted = false,
      ) => ({
        id,
        email,
        phoneNumber,
        linkedId,
        linkPrecedence: linkedId === null ? ("primary" as const) : ("secondary" as const),
        createdAt: at(ms),
        updatedAt: at(ms),
        deletedAt: deleted ? at(0) : null,
      });
      let id = 0;
      for (let c = 0; c < 600; c++) {
        const primary = ++id;
        rows.push(row(primary, `old${c}@example.com`, `+1${c}`, null, primary, c === 1));
        for (let k = 0; k < c % 3; k++) {
          const secondary = ++id;
          rows.push(
            row(
              secondary,
              `old${c}.${k}@example.com`,
              `+1${c}`,
              primary,
              secondary,
              c === 2 && k === 0,
            ),
          );
        }
      }
      // Creation order against id order: a secondary older than another with a lower id, a tie
      // on createdAt (the lower id first), and a secondary with an id below its primary's.
      const odd = 5000;
      rows.push(
        row(odd, "odd@example.com", "+1999", null, 10_000),
        row(odd - 1, "odd.low@example.com", "+1999", odd, 10_003),
        row(odd + 1, "odd.tie2@example.com", "+1998", odd, 10_002),
        row(odd + 2, "odd.tie1@example.com", "+1997", odd, 10_002),
        row(odd + 3, "odd.first@example.com", "+1999", odd, 10_001),
      );
      await insertRows(before, rows);
    } finally {
      await before.destroy();
    }
    const after = await openMigrated(older);
    try {
      const stored = await allContacts(after);
      const kept = await keptAnswers(after);
      assert.deepEqual(keptAnswerViolations(stored, kept), []);
      assert.equal(kept.size, 600, "every customer whose primary is live");
      assert.equal(
        kept.get(5000),
        JSON.stringify({
          primaryContactId: 5000,
          emails: [
            "odd@example.com",
            "odd.first@example.com",
            "odd.tie2@example.com",
            "odd.tie1@example.com",
            "odd.low@example.com",
          ],
          phoneNumbers: ["+1999", "+1998", "+1997"],
          secondaryContactIds: [5003, 5001, 5002, 4999],
        }),
      );
      assert.equal(
        await after.db
          .transaction()
          .execute((trx) => keepMissingAnswers(trx as unknown as Kysely<unknown>)),
        0,
        "nothing left to keep",
      );
      assert.equal(kept.has(2), false, "not the customer whose primary is soft-deleted");
      const third = JSON.parse(kept.get(4) ?? "null") as { emails: string[] };
      assert.deepEqual(third.emails, ["old2@example.com", "old2.1@example.com"]);
      const store = new IdentifyService(new SqlContactStore(after), new NoCache());
      const repeat = await store.identify({ email: "old599@example.com", phoneNumber: null });
      assert.equal(repeat.json, kept.get(repeat.customer.primaryContactId) ?? "missing");
    } finally {
      await after.destroy();
      await older.drop();
    }
  });

  it("drops and finds answers by primary key (no scan of CustomerAnswer)", async () => {
    const triggers = await database.db.executeQuery<{ sql: string }>(
      CompiledQuery.raw(
        "select sql from sqlite_master where type = 'trigger' and tbl_name = 'Contact' order by name",
      ),
    );
    assert.equal(triggers.rows.length, 5);
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

/** Inserts rows as they are (ids included), without the service. */
async function insertRows(
  database: Database,
  rows: {
    id: number;
    email: string | null;
    phoneNumber: string | null;
    linkedId: number | null;
    linkPrecedence: "primary" | "secondary";
    createdAt: string;
    updatedAt: string;
    deletedAt: string | null;
  }[],
): Promise<void> {
  for (let i = 0; i < rows.length; i += 100) {
    await database.db
      .insertInto("Contact")
      .values(rows.slice(i, i + 100))
      .execute();
  }
}
