import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, loadConfig } from "../src/config.js";
import { describeTarget, parseDatabaseUrl } from "../src/storage/database.js";

describe("loadConfig", () => {
  it("applies the documented defaults to an empty environment", () => {
    assert.deepEqual(loadConfig({}), {
      port: 3000,
      host: "127.0.0.1",
      database: { dialect: "sqlite", path: "./data/contacts.db" },
      databasePoolSize: 10,
      databaseLockTimeoutMs: 5000,
      sqliteSynchronous: "normal",
      logLevel: "info",
      errorMessages: "masked",
      redisUrl: null,
      cache: "auto",
      cacheTtlSeconds: 3600,
      cachePrefix: "identity:v1:",
      cacheMaxEntries: 25000,
      cacheTimeoutMs: 50,
      workers: 1,
      shutdownTimeoutMs: 10000,
      apiKeys: [],
      apiKeysFile: [],
      rateLimitMax: 600000,
      rateLimitSyncMs: 100,
      rateLimitWindowMs: 60000,
      threatLimit: 5,
      threatWindowMs: 60000,
      threatCooldownMs: 300000,
      trustProxy: false,
      corsOrigins: [],
      requestTimeoutMs: 10000,
      connectionTimeoutMs: 120000,
      handlerTimeoutMs: 15000,
      keepAliveTimeoutMs: 72000,
      maxRequestsPerSocket: 10000,
    });
  });

  it("runs one worker per CPU in production unless WORKERS says otherwise", () => {
    assert.ok(loadConfig({ NODE_ENV: "production" }).workers >= 1);
    assert.equal(loadConfig({ NODE_ENV: "production", WORKERS: "3" }).workers, 3);
    assert.equal(loadConfig({ NODE_ENV: "development" }).workers, 1);
  });

  it("reads each kind of DATABASE_URL", () => {
    const cases: [string, unknown][] = [
      ["sqlite::memory:", { dialect: "sqlite", path: ":memory:" }],
      [
        "sqlite:/var/lib/identity/contacts.db",
        { dialect: "sqlite", path: "/var/lib/identity/contacts.db" },
      ],
      [
        "mysql://app:secret@db:3306/identity",
        { dialect: "mysql", url: "mysql://app:secret@db:3306/identity" },
      ],
      ["mariadb://app@db/identity", { dialect: "mysql", url: "mysql://app@db/identity" }],
      [
        "postgres://app@db:5432/identity",
        { dialect: "postgres", url: "postgres://app@db:5432/identity" },
      ],
      [
        "postgresql://app@db/identity",
        { dialect: "postgres", url: "postgresql://app@db/identity" },
      ],
    ];
    for (const [url, expected] of cases) {
      assert.deepEqual(loadConfig({ DATABASE_URL: url }).database, expected, url);
    }
  });

  it("reports every bad variable at once, each naming the variable", () => {
    assert.throws(
      () =>
        loadConfig({
          PORT: "http",
          DATABASE_URL: "oracle://db/x",
          DATABASE_POOL_SIZE: "0",
          LOG_LEVEL: "loud",
          ERROR_MESSAGES: "verbose",
        }),
      (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.deepEqual(
          error.problems.map((line) => line.split(":")[0]),
          ["PORT", "DATABASE_URL", "DATABASE_POOL_SIZE", "LOG_LEVEL", "ERROR_MESSAGES"],
        );
        return true;
      },
    );
  });

  it("keeps API keys only as SHA-256 digests, from API_KEYS and API_KEYS_FILE", () => {
    const dir = mkdtempSync(join(tmpdir(), "idr-keys-"));
    const file = join(dir, "keys");
    const digest = createHash("sha256").update("file-key-0123456789").digest("hex");
    writeFileSync(file, `# the shop backend\n${digest}\n\n`);
    try {
      const config = loadConfig({
        API_KEYS: "env-key-0123456789, other-key-0123456789",
        API_KEYS_FILE: file,
      });
      assert.deepEqual(config.apiKeys, [
        createHash("sha256").update("env-key-0123456789").digest("hex"),
        createHash("sha256").update("other-key-0123456789").digest("hex"),
      ]);
      assert.deepEqual(config.apiKeysFile, [digest]);
      assert.throws(
        () => loadConfig({ API_KEYS: "short" }),
        /API_KEYS: every key must be at least 16/,
      );
      writeFileSync(file, "not-a-digest\n");
      assert.throws(
        () => loadConfig({ API_KEYS_FILE: file }),
        /API_KEYS_FILE: every line must be a hex SHA-256/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("reads TRUST_PROXY as a boolean or proxy addresses, and refuses anything else at start", () => {
    assert.equal(loadConfig({ TRUST_PROXY: "true" }).trustProxy, true);
    assert.equal(loadConfig({ TRUST_PROXY: "false" }).trustProxy, false);
    assert.equal(
      loadConfig({ TRUST_PROXY: "10.0.0.0/8, 192.168.1.7,::1,fd00::/8,loopback" }).trustProxy,
      "10.0.0.0/8,192.168.1.7,::1,fd00::/8,loopback",
    );
    // `1` (one hop, elsewhere) would be read by Fastify as the address 0.0.0.1: nobody trusted.
    for (const value of ["TRUE", "yes", "1", "10.0.0.0/8,", "10.0.0.0/33", "10.0.0.1/8/8", "lb"]) {
      assert.throws(
        () => loadConfig({ TRUST_PROXY: value }),
        /^ConfigError: .*TRUST_PROXY: /s,
        value,
      );
    }
  });

  it("reads CORS_ORIGINS as origins exactly as a browser sends them", () => {
    assert.deepEqual(
      loadConfig({ CORS_ORIGINS: "https://shop.example.com, http://localhost:5173" }).corsOrigins,
      ["https://shop.example.com", "http://localhost:5173"],
    );
    // A path, a trailing slash or a missing scheme would never equal an Origin header.
    for (const value of ["https://shop.example.com/", "shop.example.com:443", "https://a.io/x"]) {
      assert.throws(() => loadConfig({ CORS_ORIGINS: value }), /CORS_ORIGINS: /, value);
    }
  });

  it("masks a database password in the URL's user part and in its query", () => {
    for (const url of [
      "postgres://app:hunter2@db/identity?sslmode=require",
      "postgres://app@db/identity?password=hunter2&sslmode=require",
      "mysql://app@db/identity?Password=hunter2",
    ]) {
      const shown = describeTarget(parseDatabaseUrl(url));
      assert.doesNotMatch(shown, /hunter2/, shown);
      assert.match(shown, /\*\*\*/, shown);
    }
  });

  it("rejects a database URL without a database name", () => {
    assert.throws(
      () => loadConfig({ DATABASE_URL: "postgres://db:5432" }),
      /DATABASE_URL: needs a host and a database name/,
    );
  });
});
