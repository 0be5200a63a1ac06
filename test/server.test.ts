import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync, watch } from "node:fs";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import Sqlite from "better-sqlite3";
import { postIdentify, runServerToExit, startServer } from "./support/server.js";

describe("the server process", () => {
  it("creates its SQLite file on first start, serves, and exits 0 on SIGTERM", async () => {
    const dir = mkdtempSync(join(tmpdir(), "idr-server-"));
    const path = join(dir, "nested", "contacts.db");
    try {
      const server = await startServer({ DATABASE_URL: `sqlite:${path}` });
      assert.ok(existsSync(path));
      const response = await postIdentify(server.url, { email: "doc@hillvalley.edu" });
      assert.equal(response.status, 200);
      assert.ok(response.headers.get("x-request-id"));
      assert.equal(await server.stop(), 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("merges customers whose rows are far apart on SQLite without a temporary file", async () => {
    // A merge relinks every row of the newer customer in one statement, inside the batch's
    // transaction, so SQLite keeps a statement journal of every page it changes. Past 64 KiB
    // (about 15 pages) that journal went to a file in SQLite's temporary directory: a host
    // without a writable one (a read-only root file system) failed every such merge with a disk
    // I/O error. SQLITE_TMPDIR points SQLite's temporary files at a directory watched here.
    const dir = mkdtempSync(join(tmpdir(), "idr-server-"));
    const temporary = join(dir, "sqlite-tmp");
    mkdirSync(temporary);
    const created: string[] = [];
    const watcher = watch(temporary, (_event, name) => created.push(String(name)));
    const server = await startServer({
      DATABASE_URL: `sqlite:${join(dir, "contacts.db")}`,
      SQLITE_TMPDIR: temporary,
    });
    try {
      const ok = async (body: { email: string; phoneNumber: string }) => {
        const response = await postIdentify(server.url, body);
        assert.equal(response.status, 200, response.text);
        return response.body as { primaryContactId: number; secondaryContactIds: number[] };
      };
      // Two customers of 30 rows each, every row of one tens of rows away from the next (about a
      // table page), with other customers' rows in between.
      const ROWS = 30;
      const first = await ok({ email: "a0@example.com", phoneNumber: "1000000" });
      await ok({ email: "b0@example.com", phoneNumber: "2000000" });
      for (let i = 1; i < ROWS; i++) {
        await ok({ email: `a${i}@example.com`, phoneNumber: "1000000" });
        await ok({ email: `b${i}@example.com`, phoneNumber: "2000000" });
        await Promise.all(
          Array.from({ length: 60 }, (_, k) =>
            ok({ email: `f${i}.${k}@example.com`, phoneNumber: String(3_000_000 + i * 100 + k) }),
          ),
        );
      }
      const merged = await ok({ email: "a0@example.com", phoneNumber: "2000000" });
      assert.equal(merged.primaryContactId, first.primaryContactId);
      assert.equal(merged.secondaryContactIds.length, 2 * ROWS - 1);
      await sleep(200);
      assert.deepEqual(created, []);
    } finally {
      assert.equal(await server.stop(), 0);
      watcher.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("starts on a schema a newer build migrated, with a warning (a rolling deploy, a rollback)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "idr-server-"));
    const path = join(dir, "contacts.db");
    try {
      // This build's migrations, then one it does not know, recorded as a newer build would.
      assert.equal(await (await startServer({ DATABASE_URL: `sqlite:${path}` })).stop(), 0);
      const file = new Sqlite(path);
      file
        .prepare("insert into kysely_migration (name, timestamp) values (?, ?)")
        .run("9999-from-a-newer-build", new Date().toISOString());
      file.close();
      const server = await startServer({ DATABASE_URL: `sqlite:${path}` });
      const warning = server.lines.find((line) => line.includes("migrated by a newer build"));
      assert.ok(warning, server.lines.join("\n"));
      assert.deepEqual((JSON.parse(warning) as { newer: string[] }).newer, [
        "9999-from-a-newer-build",
      ]);
      const response = await postIdentify(server.url, { email: "doc@hillvalley.edu" });
      assert.equal(response.status, 200);
      assert.equal((await fetch(`${server.url}/readyz`)).status, 200);
      assert.equal(await server.stop(), 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("exits non-zero with one line naming DATABASE_URL when the database is unreachable", async () => {
    const result = await runServerToExit({
      DATABASE_URL: "postgres://root:hunter2@127.0.0.1:1/identity",
    });
    assert.equal(result.code, 1);
    const lines = result.stderr.trim().split("\n");
    assert.equal(lines.length, 1, result.stderr);
    assert.match(
      lines[0] ?? "",
      /^DATABASE_URL: cannot use postgres:\/\/root:\*\*\*@127\.0\.0\.1:1\/identity: .*ECONNREFUSED/,
    );
    assert.doesNotMatch(result.stderr + result.stdout, /hunter2/);
  });

  it("exits non-zero with one line naming DATABASE_URL when SQLite cannot open its file", async () => {
    // A directory where the file should be: SQLite cannot open it, as in a read-only one.
    const dir = mkdtempSync(join(tmpdir(), "idr-server-"));
    try {
      const result = await runServerToExit({ DATABASE_URL: `sqlite:${dir}` });
      assert.equal(result.code, 1);
      const lines = result.stderr.trim().split("\n");
      assert.equal(lines.length, 1, result.stderr);
      const [line = ""] = lines;
      assert.ok(line.startsWith(`DATABASE_URL: cannot use sqlite:${dir}: `), line);
      assert.ok(line.endsWith("unable to open database file"), line);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("with WORKERS, exits non-zero when its workers cannot start instead of forking them forever", async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const { port } = taken.address() as AddressInfo;
    const dir = mkdtempSync(join(tmpdir(), "idr-server-"));
    try {
      const result = await runServerToExit({
        DATABASE_URL: `sqlite:${join(dir, "contacts.db")}`,
        PORT: String(port),
        WORKERS: "2",
      });
      assert.equal(result.code, 1);
      assert.match(result.stdout, /a worker failed to start; stopping/);
      assert.doesNotMatch(result.stdout, /worker died; starting another/);
    } finally {
      taken.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("exits non-zero listing every bad variable", async () => {
    const result = await runServerToExit({ DATABASE_URL: "nonsense", PORT: "99999" });
    assert.equal(result.code, 1);
    assert.deepEqual(result.stderr.trim().split("\n"), [
      "configuration error: PORT: must be a whole number from 0 to 65535",
      "configuration error: DATABASE_URL: is not a URL (sqlite:PATH, mysql://… or postgres://…)",
    ]);
  });
});
