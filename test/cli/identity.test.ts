import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { NoCache } from "../../src/cache/customer-cache.js";
import type { Customer } from "../../src/domain/contact.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import { openDatabase } from "../../src/storage/database.js";
import type { Database } from "../../src/storage/database.js";
import { pendingMigrations } from "../../src/storage/migrate.js";
import {
  allContacts,
  createTestDatabase,
  dialectsUnderTest,
  migratedDatabaseForSuite,
  openMigrated,
} from "../support/databases.js";
import type { TestDatabase } from "../support/databases.js";
import { startServer } from "../support/server.js";

const ROOT = new URL("../../", import.meta.url).pathname;
const COMMAND = ["--import", "tsx", "src/cli/identity.ts"];

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `identity ...args` as a process with `env` added, and checks it printed no stack. */
async function identity(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  const child = spawn(process.execPath, [...COMMAND, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const [code] = (await once(child, "exit")) as [number | null];
  clearTimeout(timer);
  assert.ok(!stderr.includes("    at "), `a stack trace on stderr:\n${stderr}`);
  return { code, stdout, stderr };
}

/** Asserts a failed run: the exit code, nothing on stdout, and exactly one line on stderr. */
function assertOneLineFailure(run: Run, code: number, line: RegExp): void {
  assert.equal(run.code, code, run.stderr);
  assert.equal(run.stdout, "");
  const lines = run.stderr.split("\n");
  assert.equal(lines.length, 2, run.stderr);
  assert.equal(lines[1], "");
  assert.match(lines[0] ?? "", line);
}

describe("the identity command line", () => {
  it("prints the usage, naming every command, for --help, -h, help, no command and a command's --help", async () => {
    const runs = await Promise.all(
      [["--help"], ["-h"], ["help"], [], ["lookup", "--help"]].map((args) => identity(args)),
    );
    for (const run of runs) {
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stderr, "");
      assert.equal(run.stdout, runs[0]?.stdout);
    }
    const usage = runs[0]?.stdout ?? "";
    assert.match(usage, /^Usage: identity <command>/);
    for (const command of [
      "serve",
      "migrate",
      "lookup --email",
      "lookup --phone",
      "merges --email",
      "merges --phone",
      "stats",
      "help",
    ]) {
      assert.match(usage, new RegExp(`^  ${command} `, "m"), `usage lists ${command}`);
    }
  });

  it("exits 2 with one line for an unknown command or option, before reading the configuration", async () => {
    const cases: [string[], RegExp][] = [
      [["frobnicate"], /^identity: unknown command 'frobnicate' \(see identity --help\)$/],
      [["--verbose"], /^identity: unknown option '--verbose' \(see identity --help\)$/],
      [["stats", "--all"], /^identity: stats: Unknown option '--all'/],
      [["migrate", "now"], /^identity: migrate: Unexpected argument 'now'/],
    ];
    const runs = await Promise.all(
      cases.map(([args]) => identity(args, { DATABASE_URL: "nonsense" })),
    );
    runs.forEach((run, i) => {
      assertOneLineFailure(run, 2, cases[i]?.[1] ?? /^$/);
    });
  });

  it("lookup exits 2 unless given exactly one valid --email or --phone, before reading the configuration", async () => {
    const cases: [string[], RegExp][] = [
      [["lookup"], /^identity: lookup needs --email EMAIL or --phone PHONE/],
      [
        ["lookup", "--email", "doc@hillvalley.edu", "--phone", "555000"],
        /^identity: lookup takes --email or --phone, not both/,
      ],
      [
        ["lookup", "--phone", "555000", "--phone", "123456"],
        /^identity: lookup: --phone is given more than once/,
      ],
      [["lookup", "--email", "not-an-email"], /^identity: lookup: invalid --email: /],
      [["lookup", "--phone", "12"], /^identity: lookup: invalid --phone: /],
      [["lookup", "--email", "   "], /^identity: lookup: --email needs a value/],
      [["lookup", "--email"], /^identity: lookup: Option '--email <value>' argument missing/],
    ];
    const runs = await Promise.all(
      cases.map(([args]) => identity(args, { DATABASE_URL: "nonsense" })),
    );
    runs.forEach((run, i) => {
      assertOneLineFailure(run, 2, cases[i]?.[1] ?? /^$/);
    });
  });

  it("exits 1 naming each bad variable, prefixed configuration error:", async () => {
    const run = await identity(["stats"], { DATABASE_URL: "nonsense", PORT: "99999" });
    assert.equal(run.code, 1);
    assert.equal(run.stdout, "");
    assert.deepEqual(run.stderr.trim().split("\n"), [
      "configuration error: PORT: must be a whole number from 0 to 65535",
      "configuration error: DATABASE_URL: is not a URL (sqlite:PATH, mysql://… or postgres://…)",
    ]);
  });

  it("exits 1 with one line naming DATABASE_URL, password masked, when the database is unreachable", async () => {
    const env = { DATABASE_URL: "postgres://root:hunter2@127.0.0.1:1/identity" };
    const runs = await Promise.all(
      [["stats"], ["lookup", "--email", "doc@hillvalley.edu"], ["migrate"]].map((args) =>
        identity(args, env),
      ),
    );
    for (const run of runs) {
      assertOneLineFailure(
        run,
        1,
        /^DATABASE_URL: cannot (read|migrate) postgres:\/\/root:\*\*\*@127\.0\.0\.1:1\/identity: .*ECONNREFUSED/,
      );
      assert.doesNotMatch(run.stderr, /hunter2/);
    }
  });

  it("does not create a missing SQLite file for a lookup", async () => {
    const dir = mkdtempSync(join(tmpdir(), "idr-cli-"));
    try {
      const path = join(dir, "nested", "contacts.db");
      const run = await identity(["lookup", "--phone", "123456"], {
        DATABASE_URL: `sqlite:${path}`,
      });
      assertOneLineFailure(run, 1, /^DATABASE_URL: sqlite:.*contacts\.db does not exist/);
      assert.equal(existsSync(join(dir, "nested")), false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("serve starts the HTTP server as npm start does, and stops with 0 on SIGTERM", async () => {
    const dir = mkdtempSync(join(tmpdir(), "idr-cli-"));
    const server = await startServer({ DATABASE_URL: `sqlite:${join(dir, "contacts.db")}` }, [
      ...COMMAND,
      "serve",
    ]);
    try {
      const response = await fetch(`${server.url}/identify`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email: "doc@hillvalley.edu" }),
      });
      assert.equal(response.status, 200);
      assert.deepEqual(await response.json(), {
        primaryContactId: 1,
        emails: ["doc@hillvalley.edu"],
        phoneNumbers: [],
        secondaryContactIds: [],
      });
      assert.equal(await server.stop(), 0);
    } finally {
      server.process.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

for (const dialect of dialectsUnderTest()) {
  describe(`identity commands on ${dialect}`, () => {
    let test: TestDatabase;
    let database: Database;
    let env: Record<string, string>;
    let lorraine: Customer;
    let doc: Customer;

    before(async () => {
      test = await createTestDatabase(dialect);
      database = await openMigrated(test);
      env = { DATABASE_URL: test.url };
      const service = new IdentifyService(new SqlContactStore(database), new NoCache());
      const first = await service.identify({
        email: "lorraine@hillvalley.edu",
        phoneNumber: "123456",
      });
      lorraine = (await service.identify({ email: "mcfly@hillvalley.edu", phoneNumber: "123456" }))
        .customer;
      doc = (await service.identify({ email: "doc@hillvalley.edu", phoneNumber: "555000" }))
        .customer;
      assert.equal(lorraine.primaryContactId, first.customer.primaryContactId);
      assert.equal(lorraine.secondaryContactIds.length, 1);
    });

    after(async () => {
      await database.destroy();
      await test.drop();
    });

    it("lookup --email prints the consolidated customer as one line of JSON, normalizing the email", async () => {
      const run = await identity(["lookup", "--email", " LORRAINE@hillvalley.edu "], env);
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stderr, "");
      assert.equal(
        run.stdout,
        `${JSON.stringify({
          primaryContactId: lorraine.primaryContactId,
          emails: ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"],
          phoneNumbers: ["123456"],
          secondaryContactIds: lorraine.secondaryContactIds,
        })}\n`,
      );
    });

    it("lookup --phone normalizes the phone and prints the same customer", async () => {
      const run = await identity(["lookup", "--phone", "12-34-56"], env);
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stdout, `${JSON.stringify(lorraine)}\n`);
      const other = await identity(["lookup", "--phone=555 000"], env);
      assert.equal(other.code, 0, other.stderr);
      assert.equal(
        other.stdout,
        `${JSON.stringify({
          primaryContactId: doc.primaryContactId,
          emails: ["doc@hillvalley.edu"],
          phoneNumbers: ["555000"],
          secondaryContactIds: [],
        })}\n`,
      );
    });

    it("lookup exits 1 with one line when no customer has the email or phone", async () => {
      const [email, phone] = await Promise.all([
        identity(["lookup", "--email", "biff@hillvalley.edu"], env),
        identity(["lookup", "--phone", "999999"], env),
      ]);
      assertOneLineFailure(email, 1, /^no customer has that email$/);
      assertOneLineFailure(phone, 1, /^no customer has that phone number$/);
    });

    it("lookup writes nothing", async () => {
      const before = await allContacts(database);
      const runs = await Promise.all(
        [
          ["lookup", "--email", "mcfly@hillvalley.edu"],
          ["lookup", "--phone", "555000"],
          ["lookup", "--email", "marty@hillvalley.edu"],
        ].map((args) => identity(args, env)),
      );
      assert.deepEqual(
        runs.map((run) => run.code),
        [0, 0, 1],
      );
      assert.deepEqual(await allContacts(database), before);
      assert.equal(before.length, 3);
    });

    it("stats counts live contacts and customers and names the largest customer", async () => {
      const run = await identity(["stats"], env);
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stderr, "");
      assert.deepEqual(JSON.parse(run.stdout), {
        contacts: 3,
        customers: 2,
        largestCustomer: { primaryContactId: lorraine.primaryContactId, contacts: 2 },
      });
      assert.equal(run.stdout.split("\n").length, 2, "one line of JSON");
    });

    it("migrate says the schema is up to date on a migrated database", async () => {
      const run = await identity(["migrate"], env);
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stderr, "");
      assert.equal(run.stdout, `${database.description}: schema is up to date\n`);
    });

    it("lookup and stats refuse an unmigrated database with one line, and migrate nothing", async () => {
      const fresh = await createTestDatabase(dialect);
      const unmigrated = openDatabase(fresh.target, { poolSize: 1, lockTimeoutMs: 5000 });
      try {
        const freshEnv = { DATABASE_URL: fresh.url };
        for (const args of [["lookup", "--email", "doc@hillvalley.edu"], ["stats"]]) {
          assertOneLineFailure(
            await identity(args, freshEnv),
            1,
            /^DATABASE_URL: cannot read .*: the schema is not migrated \(pending: 0001-create-contact, 0002-create-contact-merge, 0003-create-customer-answer, 0004-create-mysql-procedures, 0005-lock-only-primaries, 0006-create-postgres-identify, 0007-create-mysql-identify, 0008-postgres-identify-expected, 0009-create-cache-debt\); run identity migrate$/,
          );
        }
        assert.deepEqual(await pendingMigrations(unmigrated), [
          "0001-create-contact",
          "0002-create-contact-merge",
          "0003-create-customer-answer",
          "0004-create-mysql-procedures",
          "0005-lock-only-primaries",
          "0006-create-postgres-identify",
          "0007-create-mysql-identify",
          "0008-postgres-identify-expected",
          "0009-create-cache-debt",
        ]);
      } finally {
        await unmigrated.destroy();
        await fresh.drop();
      }
    });
  });
}

for (const dialect of dialectsUnderTest()) {
  describe(`identity merges on ${dialect}`, () => {
    let test: TestDatabase;
    let database: Database;
    let env: Record<string, string>;
    const ids: Record<"a" | "b" | "c" | "d", number> = { a: 0, b: 0, c: 0, d: 0 };

    before(async () => {
      test = await createTestDatabase(dialect);
      database = await openMigrated(test);
      env = { DATABASE_URL: test.url };
      const service = new IdentifyService(new SqlContactStore(database), new NoCache());
      const primary = async (email: string, phoneNumber: string) =>
        (await service.identify({ email, phoneNumber })).customer.primaryContactId;
      ids.a = await primary("a@hillvalley.edu", "111111");
      ids.b = await primary("b@hillvalley.edu", "222222");
      ids.c = await primary("c@hillvalley.edu", "333333");
      ids.d = await primary("d@hillvalley.edu", "444444");
      // C moves under B, then B (with C) under A; D is never merged.
      const bc = await service.identify({ email: "b@hillvalley.edu", phoneNumber: "333333" });
      assert.equal(bc.outcome, "merged");
      const ab = await service.identify({ email: "a@hillvalley.edu", phoneNumber: "222222" });
      assert.equal(ab.outcome, "merged");
      assert.equal(ab.customer.primaryContactId, ids.a);
    });

    after(async () => {
      await database.destroy();
      await test.drop();
    });

    it("prints every merge that went into the customer, oldest first, with the bridging request's identifiers", async () => {
      const [byMergedPhone, byWinnerEmail] = await Promise.all([
        identity(["merges", "--phone", "333-333"], env),
        identity(["merges", "--email", "A@hillvalley.edu"], env),
      ]);
      assert.equal(byMergedPhone.code, 0, byMergedPhone.stderr);
      assert.equal(byMergedPhone.stderr, "");
      assert.equal(byWinnerEmail.stdout, byMergedPhone.stdout);
      assert.equal(byMergedPhone.stdout.split("\n").length, 2, "one line of JSON");
      const found = JSON.parse(byMergedPhone.stdout) as {
        primaryContactId: number;
        merges: { at: string }[];
      };
      assert.equal(found.primaryContactId, ids.a);
      assert.deepEqual(
        found.merges.map((merge) => ({ ...merge, at: undefined })),
        [
          {
            at: undefined,
            winnerId: ids.b,
            mergedId: ids.c,
            kind: "bridge",
            email: "b@hillvalley.edu",
            phoneNumber: "333333",
          },
          {
            at: undefined,
            winnerId: ids.a,
            mergedId: ids.b,
            kind: "bridge",
            email: "a@hillvalley.edu",
            phoneNumber: "222222",
          },
        ],
      );
      for (const merge of found.merges) {
        assert.ok(Math.abs(Date.parse(merge.at) - Date.now()) < 60_000, merge.at);
      }
    });

    it("prints no merges for a customer never merged, and exits 1 for an unknown identifier", async () => {
      const [never, unknown] = await Promise.all([
        identity(["merges", "--email", "d@hillvalley.edu"], env),
        identity(["merges", "--phone", "999999"], env),
      ]);
      assert.equal(never.code, 0, never.stderr);
      assert.deepEqual(JSON.parse(never.stdout), { primaryContactId: ids.d, merges: [] });
      assertOneLineFailure(unknown, 1, /^no customer has that phone number$/);
    });

    it("follows a customer whose primary was soft-deleted, before and after its stand-in is promoted", async () => {
      const service = new IdentifyService(new SqlContactStore(database), new NoCache());
      const e = (await service.identify({ email: "e@hillvalley.edu", phoneNumber: "555111" }))
        .customer.primaryContactId;
      const f = (await service.identify({ email: "f@hillvalley.edu", phoneNumber: "555222" }))
        .customer.primaryContactId;
      await service.identify({ email: "e@hillvalley.edu", phoneNumber: "555222" });
      const deletedAt = dialect === "sqlite" ? new Date().toISOString() : new Date();
      await database.db.updateTable("Contact").set({ deletedAt }).where("id", "=", e).execute();
      const bridge = {
        winnerId: e,
        mergedId: f,
        kind: "bridge",
        email: "e@hillvalley.edu",
        phoneNumber: "555222",
      };
      const history = async () => {
        const run = await identity(["merges", "--phone", "555222"], env);
        assert.equal(run.code, 0, run.stderr);
        const found = JSON.parse(run.stdout) as { primaryContactId: number; merges: object[] };
        return { ...found, merges: found.merges.map((merge) => ({ ...merge, at: undefined })) };
      };
      // F's row stands in for the deleted primary E until a request touches the customer.
      assert.deepEqual(await history(), {
        primaryContactId: f,
        merges: [{ at: undefined, ...bridge }],
      });
      const touched = await service.identify({ email: "f@hillvalley.edu", phoneNumber: null });
      assert.equal(touched.outcome, "merged");
      assert.deepEqual(await history(), {
        primaryContactId: f,
        merges: [
          { at: undefined, ...bridge },
          {
            at: undefined,
            winnerId: f,
            mergedId: e,
            kind: "promotion",
            email: "f@hillvalley.edu",
            phoneNumber: null,
          },
        ],
      });
    });

    it("checks its command line as lookup does", async () => {
      const run = await identity(["merges", "--email", "x@hillvalley.edu", "--phone", "123456"]);
      assertOneLineFailure(run, 2, /^identity: merges takes --email or --phone, not both/);
    });
  });
}

for (const dialect of dialectsUnderTest()) {
  describe(`identity stats on ${dialect}, with a soft-deleted primary`, () => {
    const suite = migratedDatabaseForSuite(dialect);

    it("counts the customer while a row lives, names it by the row that stands in as the API answers, and breaks ties on that id", async () => {
      const service = new IdentifyService(new SqlContactStore(suite.database), new NoCache());
      const time = (ms: number) =>
        dialect === "sqlite" ? new Date(ms).toISOString() : new Date(ms);
      const add = async (email: string, phoneNumber: string) => {
        const { customer } = await service.identify({ email, phoneNumber });
        return customer.secondaryContactIds.at(-1) ?? customer.primaryContactId;
      };
      // G's primary first, then H with four rows, then G's four secondaries.
      const g = await add("g@hillvalley.edu", "700000");
      const h = await add("h@hillvalley.edu", "800000");
      await add("h1@hillvalley.edu", "800000");
      await add("h2@hillvalley.edu", "800000");
      const h3 = await add("h3@hillvalley.edu", "800000");
      await add("g1@hillvalley.edu", "700000");
      await add("g2@hillvalley.edu", "700000");
      const g3 = await add("g3@hillvalley.edu", "700000");
      await add("g4@hillvalley.edu", "700000");
      // G's primary is soft-deleted; its oldest live row is g3 (older than g1, though a higher id).
      await suite.database.db
        .updateTable("Contact")
        .set({ deletedAt: time(Date.now()) })
        .where("id", "=", g)
        .execute();
      await suite.database.db
        .updateTable("Contact")
        .set({ createdAt: time(Date.UTC(2020, 0, 1)) })
        .where("id", "=", g3)
        .execute();
      const answered = await identity(["lookup", "--phone", "700000"], env());
      assert.equal((JSON.parse(answered.stdout) as Customer).primaryContactId, g3);

      const stats = async () => {
        const run = await identity(["stats"], env());
        assert.equal(run.code, 0, run.stderr);
        return JSON.parse(run.stdout) as unknown;
      };
      // Four live rows each: the tie goes to the lower id answered (h), not to G's deleted primary.
      assert.deepEqual(await stats(), {
        contacts: 8,
        customers: 2,
        largestCustomer: { primaryContactId: h, contacts: 4 },
      });
      await suite.database.db
        .updateTable("Contact")
        .set({ deletedAt: time(Date.now()) })
        .where("id", "=", h3)
        .execute();
      assert.deepEqual(await stats(), {
        contacts: 7,
        customers: 2,
        largestCustomer: { primaryContactId: g3, contacts: 4 },
      });
    });

    function env(): Record<string, string> {
      return { DATABASE_URL: suite.test.url };
    }
  });
}
