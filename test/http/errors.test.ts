import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { sql } from "kysely";
import { pino } from "pino";
import { NoCache } from "../../src/cache/customer-cache.js";
import { metricsOf, readinessOf } from "../../src/deps.js";
import { buildApp } from "../../src/http/app.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
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

const INVALID = "Invalid CSRF token.";
const DATABASE_FAILURE = "Request timestamp invalid.";

/** Each rejected request: a name, then a JSON body or a raw payload with its content type. */
const REJECTED: { name: string; body?: unknown; raw?: string; contentType?: string }[] = [
  { name: "malformed JSON", raw: '{"email":' },
  { name: "text/plain body", raw: "email=a@b.co", contentType: "text/plain" },
  { name: "form body", raw: "email=a%40b.co", contentType: "application/x-www-form-urlencoded" },
  { name: "empty JSON body", raw: "" },
  { name: "JSON null", raw: "null" },
  { name: "JSON string", raw: '"lorraine@hillvalley.edu"' },
  { name: "JSON number", raw: "123456" },
  { name: "array", body: [{ email: "lorraine@hillvalley.edu" }] },
  { name: "empty object", body: {} },
  { name: "both null", body: { email: null, phoneNumber: null } },
  { name: "both empty strings", body: { email: "", phoneNumber: "   " } },
  { name: "unknown field", body: { email: "lorraine@hillvalley.edu", name: "Lorraine" } },
  { name: "nested object as email", body: { email: { value: "lorraine@hillvalley.edu" } } },
  { name: "nested object as phone", body: { phoneNumber: { value: "123456" } } },
  { name: "array as email", body: { email: ["lorraine@hillvalley.edu"] } },
  { name: "number as email", body: { email: 42 } },
  { name: "boolean as phone", body: { phoneNumber: true } },
  { name: "negative phone number", body: { phoneNumber: -123456 } },
  { name: "fractional phone number", body: { phoneNumber: 1234.5 } },
  { name: "email without @", body: { email: "lorraine.hillvalley.edu" } },
  { name: "email with two @", body: { email: "lorraine@@hillvalley.edu" } },
  { name: "email without a dotted domain", body: { email: "lorraine@localhost" } },
  { name: "email with an empty local part", body: { email: "@hillvalley.edu" } },
  { name: "email of 255 characters", body: { email: `${"a".repeat(64)}@${"b".repeat(186)}.edu` } },
  { name: "phone with letters", body: { phoneNumber: "555-CALL-NOW" } },
  { name: "phone of 3 digits", body: { phoneNumber: "123" } },
  { name: "phone of 16 digits", body: { phoneNumber: "1234567890123456" } },
  {
    name: "valid email with an invalid phone",
    body: { email: "ok@hillvalley.edu", phoneNumber: "x" },
  },
];

for (const dialect of dialectsUnderTest()) {
  describe(`rejected requests on ${dialect}`, () => {
    let test: TestDatabase;
    let database: Database;
    let running: RunningApp;

    before(async () => {
      test = await createTestDatabase(dialect);
      database = await openMigrated(test);
      running = await startApp(database);
      const seeded = await postIdentify(running.url, {
        email: "lorraine@hillvalley.edu",
        phoneNumber: "123456",
      });
      assert.equal(seeded.status, 200);
    });

    after(async () => {
      await running.close();
      await database.destroy();
      await test.drop();
    });

    for (const shape of REJECTED) {
      it(`answers 400 with the masked message and writes nothing: ${shape.name}`, async () => {
        const before = await allContacts(database);
        const response = await postIdentify(running.url, shape.body, {
          ...(shape.raw !== undefined ? { raw: shape.raw } : {}),
          ...(shape.contentType !== undefined ? { contentType: shape.contentType } : {}),
        });
        const requestId = response.headers.get("x-request-id");
        assert.ok(requestId);
        assert.equal(response.status, 400);
        assert.deepEqual(response.body, { error: INVALID, requestId });
        assert.deepEqual(await allContacts(database), before);
        const logged = running.logs.filter((line) => line.requestId === requestId);
        assert.equal(logged.length, 1, "one log line records the cause");
        const [line] = logged;
        assert.ok(line);
        assert.equal(line.code, "INVALID_INPUT");
        assert.equal(typeof line.reason, "string");
      });
    }

    it("answers 413 with the masked message for a body over 16 KiB", async () => {
      const response = await postIdentify(running.url, {
        email: `${"a".repeat(17000)}@hillvalley.edu`,
      });
      assert.equal(response.status, 413);
      assert.deepEqual(response.body, {
        error: INVALID,
        requestId: response.headers.get("x-request-id"),
      });
    });

    it("keeps a safe caller-supplied X-Request-Id and replaces an unsafe one", async () => {
      const kept = await postIdentify(
        running.url,
        { email: "lorraine@hillvalley.edu" },
        { headers: { "x-request-id": "checkout-42.a" } },
      );
      assert.equal(kept.status, 200);
      assert.equal(kept.headers.get("x-request-id"), "checkout-42.a");
      const replaced = await postIdentify(
        running.url,
        {},
        { headers: { "x-request-id": "bad id\twith spaces" } },
      );
      const id = replaced.headers.get("x-request-id");
      assert.match(id ?? "", /^[0-9a-f-]{36}$/);
      assert.deepEqual(replaced.body, { error: INVALID, requestId: id });
    });

    it("answers unknown routes with 404 in the same envelope", async () => {
      const response = await fetch(`${running.url}/contacts`);
      const requestId = response.headers.get("x-request-id");
      assert.equal(response.status, 404);
      assert.deepEqual(await response.json(), { error: "Not found.", requestId });
    });
  });

  describe(`database failures on ${dialect}`, () => {
    let test: TestDatabase;
    let database: Database;
    let running: RunningApp;

    before(async () => {
      test = await createTestDatabase(dialect);
      database = await openMigrated(test);
      running = await startApp(database);
      // A real failure: the table the service needs is gone.
      await sql`drop table ${sql.table("Contact")}`.execute(database.db);
    });

    after(async () => {
      await running.close();
      await database.destroy();
      await test.drop();
    });

    it("answers 500 with the masked message and logs the driver's error under the request id", async () => {
      const response = await postIdentify(running.url, { email: "lorraine@hillvalley.edu" });
      const requestId = response.headers.get("x-request-id");
      assert.equal(response.status, 500);
      assert.deepEqual(response.body, { error: DATABASE_FAILURE, requestId });
      const logged = running.logs.filter((line) => line.requestId === requestId);
      assert.equal(logged.length, 1);
      const [line] = logged;
      assert.ok(line);
      assert.equal(line.code, "DATABASE_FAILURE");
      assert.match(String(line.reason), /Contact/);
    });
  });
}

describe("error messages", () => {
  let test: TestDatabase;
  let database: Database;

  before(async () => {
    test = await createTestDatabase("sqlite");
    database = await openMigrated(test);
  });

  after(async () => {
    await database.destroy();
    await test.drop();
  });

  it("answers with the real reason when ERROR_MESSAGES=transparent", async () => {
    const running = await startApp(database, { errorMessages: "transparent" });
    try {
      const response = await postIdentify(running.url, { email: "lorraine@localhost" });
      assert.equal(response.status, 400);
      assert.deepEqual(response.body, {
        error: "email is not a plausible address",
        requestId: response.headers.get("x-request-id"),
      });
    } finally {
      await running.close();
    }
  });

  it("answers an unexpected fault with a generic 500 and no stack", async () => {
    // Fault injection: a service whose read path throws a programming error.
    const faulty = new IdentifyService(new SqlContactStore(database), new NoCache());
    Object.defineProperty(faulty, "identify", {
      value: () => Promise.reject(new TypeError("cannot read properties of undefined")),
    });
    const cache = new NoCache();
    const app = buildApp({
      metrics: metricsOf(database, cache),
      readiness: readinessOf(database, cache),
      identify: faulty,
      logger: pino({ level: "silent" }),
      errorMessages: "masked",
    });
    try {
      const response = await app.inject({
        method: "POST",
        url: "/identify",
        payload: { email: "lorraine@hillvalley.edu" },
      });
      assert.equal(response.statusCode, 500);
      assert.deepEqual(response.json(), {
        error: "Internal server error.",
        requestId: response.headers["x-request-id"],
      });
    } finally {
      await app.close();
    }
  });

  for (const url of ["postgres://root@127.0.0.1:1/nowhere", "mysql://root@127.0.0.1:1/nowhere"]) {
    const dialect = url.startsWith("mysql") ? "mysql" : "postgres";
    it(`answers 500 with the masked message when the database is unreachable (${dialect})`, async () => {
      const { openDatabase } = await import("../../src/storage/database.js");
      const unreachable = openDatabase(
        dialect === "mysql" ? { dialect: "mysql", url } : { dialect: "postgres", url },
        { poolSize: 1, lockTimeoutMs: 1000 },
      );
      const running = await startApp(unreachable);
      try {
        const response = await postIdentify(running.url, { email: "lorraine@hillvalley.edu" });
        assert.equal(response.status, 500);
        assert.deepEqual(response.body, {
          error: DATABASE_FAILURE,
          requestId: response.headers.get("x-request-id"),
        });
        assert.doesNotMatch(
          JSON.stringify(response.body),
          /ECONNREFUSED|127\.0\.0\.1|postgres|mysql/,
        );
      } finally {
        await running.close();
        await unreachable.destroy();
      }
    });
  }
});
