import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { sql } from "kysely";
import { DEFAULT_SECURITY } from "../../src/http/app.js";
import { MASKED_MESSAGES } from "../../src/http/errors.js";
import type { Database } from "../../src/storage/database.js";
import { startApp } from "../support/app.js";
import type { RunningApp } from "../support/app.js";
import { createTestDatabase, openMigrated } from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";

const MASKED = new Set(Object.values(MASKED_MESSAGES));
const LEAKS = /\n\s+at |sqlite|kysely|select |insert |syntax error|SQLITE_|ECONN|TypeError|Error:/i;

const attackStrings = fc.constantFrom(
  "' OR 1=1 --",
  "x' UNION SELECT * FROM Contact --",
  "1; DROP TABLE Contact",
  "<script>alert(1)</script>",
  "{{constructor.constructor('x')()}}",
  "$where",
  "__proto__",
  "\u0000",
  "\ud800",
  "a".repeat(5000),
  "o'brien@example.com",
  "first+tag@example.com",
  "+44 (20) 7946-0958",
  "  MCFLY@HillValley.edu ",
);
const fieldValue = fc.oneof(
  fc.emailAddress(),
  fc.string(),
  fc.stringMatching(/^\+?[0-9 ().-]{0,20}$/),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  attackStrings,
  fc.jsonValue({ maxDepth: 2 }),
);
/** Valid bodies, then mutated: values of any type, extra or missing keys, attack strings. */
const mutatedBody = fc
  .record(
    {
      email: fieldValue,
      phoneNumber: fieldValue,
      extra: fc.dictionary(fc.oneof(fc.string(), attackStrings), fc.jsonValue({ maxDepth: 1 }), {
        maxKeys: 2,
      }),
    },
    { requiredKeys: [] },
  )
  .map(({ extra, ...fields }) => ({ ...fields, ...extra }));

describe("fuzzed POST /identify bodies", { timeout: 600_000 }, () => {
  let test: TestDatabase;
  let database: Database;
  let running: RunningApp;

  before(async () => {
    test = await createTestDatabase("sqlite");
    database = await openMigrated(test);
    running = await startApp(database, {
      // The fuzzer is one client sending many attacks: no cool-down here (tested elsewhere).
      security: { ...DEFAULT_SECURITY, threats: { limit: 1_000_000, windowMs: 1, cooldownMs: 0 } },
    });
  });

  after(async () => {
    await running.close();
    await database.destroy();
    await test.drop();
  });

  /** A cheap fingerprint of the Contact table: rows, newest id, newest change. */
  async function fingerprint(): Promise<string> {
    const result = await sql<{
      n: number;
      id: number | null;
      updated: string | null;
    }>`select count(*) as n, max(id) as id, max(updatedAt) as updated from Contact`.execute(
      database.db,
    );
    return JSON.stringify(result.rows[0]);
  }

  async function check(payload: string): Promise<void> {
    const before = await fingerprint();
    const response = await running.app.inject({
      method: "POST",
      url: "/identify",
      headers: { "content-type": "application/json" },
      payload,
    });
    assert.ok(response.statusCode < 500, `${response.statusCode} for ${payload}`);
    assert.doesNotMatch(response.body, LEAKS, payload);
    const body = response.json<Record<string, unknown>>();
    if (response.statusCode === 200) {
      assert.deepEqual(Object.keys(body).sort(), [
        "emails",
        "phoneNumbers",
        "primaryContactId",
        "secondaryContactIds",
      ]);
      return;
    }
    assert.ok(MASKED.has(String(body.error)), `${String(body.error)} for ${payload}`);
    assert.equal(body.requestId, response.headers["x-request-id"]);
    assert.equal(await fingerprint(), before, `a rejected request changed the table: ${payload}`);
  }

  it("never answers 5xx or leaks internals for 10,000 random JSON values", async () => {
    await fc.assert(
      fc.asyncProperty(fc.jsonValue(), async (value) => {
        await check(JSON.stringify(value));
      }),
      { numRuns: 10_000 },
    );
  });

  it("never answers 5xx or leaks internals for 10,000 mutations of valid bodies, and rejected ones write nothing", async () => {
    await fc.assert(
      fc.asyncProperty(mutatedBody, async (body) => {
        await check(JSON.stringify(body));
      }),
      { numRuns: 10_000 },
    );
  });
});
