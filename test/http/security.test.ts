import assert from "node:assert/strict";
import { connect } from "node:net";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import type { Command } from "ioredis";
import { NoCache } from "../../src/cache/customer-cache.js";
import { DEFAULT_SECURITY } from "../../src/http/app.js";
import type { SecurityOptions } from "../../src/http/app.js";
import { ApiKeys, hashApiKey } from "../../src/http/security.js";
import { openDatabase } from "../../src/storage/database.js";
import { startApp } from "../support/app.js";
import type { RunningApp } from "../support/app.js";
import { allContacts, migratedDatabaseForSuite } from "../support/databases.js";
import { deleteKeys, testRedisUrl, uniquePrefix } from "../support/redis.js";
import { postIdentify } from "../support/server.js";

const MASKED = "Invalid CSRF token.";

function security(overrides: Partial<SecurityOptions>): SecurityOptions {
  return { ...DEFAULT_SECURITY, ...overrides };
}

describe("hostile traffic", () => {
  const suite = migratedDatabaseForSuite("sqlite");

  it("answers attack signatures with 403 and the masked message, writes nothing, and lets real values through", async () => {
    const running = await startApp(suite.database, {
      security: security({ threats: { limit: 1000, windowMs: 60_000, cooldownMs: 1000 } }),
    });
    try {
      const attacks: { body?: unknown; raw?: string }[] = [
        { body: { email: "' OR 1=1 --" } },
        { body: { email: "x@y.co' UNION SELECT email FROM Contact" } },
        { body: { phoneNumber: "1234; DROP TABLE Contact" } },
        { body: { email: "admin@hillvalley.edu'--" } },
        { body: { email: "a/**/@hillvalley.edu" } },
        { body: { email: "<script>alert(1)</script>@hillvalley.edu" } },
        { body: { email: "{{7*7}}@hillvalley.edu" } },
        { body: { email: { $where: "1" } } },
        { body: { email: "$where@hillvalley.edu" } },
        { raw: '{"__proto__":{"admin":true},"email":"lorraine@hillvalley.edu"}' },
        { raw: '{"constructor":{"prototype":{"admin":true}}}' },
        { raw: '{"email":"lorraine@hillvalley.edu","prototype":1}' },
      ];
      const before = await allContacts(suite.database);
      for (const attack of attacks) {
        const response = await postIdentify(
          running.url,
          attack.body,
          attack.raw === undefined ? {} : { raw: attack.raw },
        );
        const requestId = response.headers.get("x-request-id");
        assert.equal(response.status, 403, JSON.stringify(attack));
        assert.deepEqual(response.body, { error: MASKED, requestId });
        const logged = running.logs.find((line) => line.requestId === requestId);
        assert.equal(logged?.code, "THREAT");
        assert.match(String(logged.reason), /^attack signature [A-Z_]+$/);
      }
      assert.deepEqual(await allContacts(suite.database), before);

      for (const body of [
        { email: "o'brien@example.com" },
        { email: "first+tag@example.com" },
        { phoneNumber: "+44 (20) 7946-0958" },
        { email: "o'brien@example.com", phoneNumber: "+44 (20) 7946-0958" },
      ]) {
        const response = await postIdentify(running.url, body);
        assert.equal(response.status, 200, JSON.stringify(body));
      }
    } finally {
      await running.close();
    }
  });

  it("refuses a client that earned several 403s for the cool-down, before any suite.database work", async () => {
    // A suite.database that cannot be reached: any suite.database work would answer 500, not 403.
    const unreachable = openDatabase(
      { dialect: "postgres", url: "postgres://root@127.0.0.1:1/nowhere" },
      { poolSize: 1, lockTimeoutMs: 1000 },
    );
    const running = await startApp(unreachable, {
      security: security({ threats: { limit: 3, windowMs: 10_000, cooldownMs: 1500 } }),
    });
    try {
      const valid = { email: "lorraine@hillvalley.edu" };
      assert.equal(
        (await postIdentify(running.url, valid)).status,
        500,
        "suite.database work is done normally",
      );
      for (let i = 0; i < 3; i++) {
        assert.equal((await postIdentify(running.url, { email: "' or 1=1 --" })).status, 403);
      }
      const cooling = await postIdentify(running.url, valid);
      assert.equal(cooling.status, 403);
      assert.deepEqual(cooling.body, {
        error: MASKED,
        requestId: cooling.headers.get("x-request-id"),
      });
      await sleep(1700);
      assert.equal((await postIdentify(running.url, valid)).status, 500, "cool-down over");
    } finally {
      await running.close();
      await unreachable.destroy();
    }
  });

  it("requires a bearer key when keys are configured, compared against their digests", async () => {
    const key = "shop-backend-7f3a9c2e41d8";
    const running = await startApp(suite.database, {
      security: security({
        keys: new ApiKeys([hashApiKey(key), hashApiKey("another-key-0000000000")]),
      }),
    });
    try {
      const body = { email: "keyed@hillvalley.edu" };
      const attempts: Record<string, string>[] = [
        {},
        { authorization: "Bearer wrong-key-but-long-enough" },
        { authorization: key },
      ];
      for (const headers of attempts) {
        const response = await postIdentify(running.url, body, { headers });
        assert.equal(response.status, 401, JSON.stringify(headers));
        assert.deepEqual(response.body, {
          error: "Unauthorized.",
          requestId: response.headers.get("x-request-id"),
        });
        assert.equal(response.headers.get("www-authenticate"), "Bearer");
      }
      const allowed = await postIdentify(running.url, body, {
        headers: { authorization: `Bearer ${key}` },
      });
      assert.equal(allowed.status, 200);
      assert.equal((await fetch(`${running.url}/metrics`)).status, 401);
      assert.equal(
        (await fetch(`${running.url}/metrics`, { headers: { authorization: `Bearer ${key}` } }))
          .status,
        200,
      );
      assert.equal((await fetch(`${running.url}/healthz`)).status, 200);
      assert.equal((await fetch(`${running.url}/readyz`)).status, 200);
    } finally {
      await running.close();
    }
  });

  const redisUrl = testRedisUrl();
  const stores: { name: string; syncMs: number; redis: boolean }[] = [
    { name: "in-process", syncMs: 0, redis: false },
    ...(redisUrl === null
      ? []
      : [
          { name: "redis, synced every 50 ms", syncMs: 50, redis: true },
          { name: "redis, a script per request", syncMs: 0, redis: true },
        ]),
  ];
  for (const store of stores) {
    it(`answers 429 with Retry-After over the limit, and serves again after the window (${store.name})`, async () => {
      const redis = store.redis && redisUrl !== null ? new Redis(redisUrl) : null;
      const prefix = uniquePrefix();
      const running = await startApp(suite.database, {
        security: security({
          rateLimit: { max: 3, windowMs: 1500, redis, prefix, syncMs: store.syncMs },
        }),
      });
      try {
        const body = { email: `limited-${store.name.replace(/\W+/g, "-")}@hillvalley.edu` };
        for (let i = 0; i < 3; i++) {
          assert.equal((await postIdentify(running.url, body)).status, 200);
        }
        const limited = await postIdentify(running.url, body);
        assert.equal(limited.status, 429);
        assert.deepEqual(limited.body, {
          error: "Too many requests.",
          requestId: limited.headers.get("x-request-id"),
        });
        const retryAfter = Number(limited.headers.get("retry-after"));
        assert.ok(retryAfter >= 1 && retryAfter <= 2, `retry-after ${retryAfter}`);
        assert.equal((await fetch(`${running.url}/healthz`)).status, 200, "health is not limited");
        await sleep(1700);
        assert.equal((await postIdentify(running.url, body)).status, 200);
      } finally {
        await running.close();
        if (redis !== null) {
          await deleteKeys(redisUrl ?? "", prefix);
          redis.disconnect();
        }
      }
    });
  }

  it(
    "shares the rate limit between instances through Redis, synced",
    { skip: redisUrl === null },
    async () => {
      const url = redisUrl ?? "";
      const prefix = uniquePrefix();
      const clients = [new Redis(url), new Redis(url)];
      const rateLimit = (redis: Redis) => ({
        max: 3,
        windowMs: 60_000,
        redis,
        prefix,
        syncMs: 300,
      });
      const [a, b] = await Promise.all(
        clients.map((redis) =>
          startApp(suite.database, { security: security({ rateLimit: rateLimit(redis) }) }),
        ),
      );
      try {
        assert.ok(a !== undefined && b !== undefined);
        const body = { email: "shared-limit@hillvalley.edu" };
        for (let i = 0; i < 2; i++) {
          assert.equal((await postIdentify(a.url, body)).status, 200);
        }
        await sleep(700);
        // Before its first sync, b has not seen a's 2 (a store asking Redis on every request would
        // refuse b's second): the documented price of syncing.
        for (let i = 0; i < 2; i++) {
          assert.equal((await postIdentify(b.url, body)).status, 200);
        }
        await sleep(700);
        // Alone, b has admitted 2 of 3; with a's 2, read back from Redis, it is over the limit.
        assert.equal((await postIdentify(b.url, body)).status, 429);
      } finally {
        await Promise.all([a?.close(), b?.close()]);
        await deleteKeys(url, prefix);
        for (const redis of clients) {
          redis.disconnect();
        }
      }
    },
  );

  /**
   * An app whose rate limit syncs (every 50 ms) through a Redis client whose eval commands (the
   * sync script) go through `onSync` while `faulty.on` is set; then the window's count in Redis.
   */
  async function withFaultySync(
    onSync: (command: Command, send: () => unknown) => unknown,
    test: (app: RunningApp, faulty: { on: boolean }) => Promise<void>,
  ): Promise<string | null> {
    const url = redisUrl ?? "";
    const prefix = uniquePrefix();
    const redis = new Redis(url);
    const faulty = { on: false };
    const send = redis.sendCommand.bind(redis) as (...a: unknown[]) => unknown;
    redis.sendCommand = (command: Command, ...rest: unknown[]) =>
      faulty.on && command.name.startsWith("eval")
        ? onSync(command, () => send(command, ...rest))
        : send(command, ...rest);
    const running = await startApp(suite.database, {
      security: security({
        rateLimit: { max: 100, windowMs: 60_000, redis, prefix, syncMs: 50 },
      }),
    });
    try {
      await test(running, faulty);
      const keys = (await redis.keys(`${prefix}*`)).filter((k) => !k.endsWith(":batches"));
      assert.equal(keys.length, 1, keys.join());
      return await redis.get(keys[0] ?? "");
    } finally {
      await running.close();
      await deleteKeys(url, prefix);
      redis.disconnect();
    }
  }

  it(
    "adds the counts made while Redis failed once it answers again",
    { skip: redisUrl === null },
    async () => {
      let refused = 0;
      let more = 0;
      const counted = await withFaultySync(
        (command) => {
          // Refused after a while, as a command that times out: requests come in meanwhile.
          refused++;
          setTimeout(() => {
            command.reject(new Error("Command timed out (test)"));
          }, 80);
          return command.promise;
        },
        async (running, failing) => {
          failing.on = true;
          const body = { email: "limit-outage@hillvalley.edu" };
          for (let i = 0; i < 3; i++) {
            assert.equal((await postIdentify(running.url, body)).status, 200);
          }
          // Requests keep coming for a second: each asks for a sync, but while Redis fails the
          // store tries at most once a second (the first try, then one more at most).
          const started = Date.now();
          while (Date.now() - started < 1000) {
            assert.equal((await postIdentify(running.url, body)).status, 200);
            more++;
            await sleep(50);
          }
          assert.ok(refused <= 2, `${refused} tries in a second`);
          failing.on = false;
          await sleep(1300);
        },
      );
      assert.equal(counted, String(3 + more));
    },
  );

  it(
    "adds a batch once when its send timed out after Redis ran it",
    { skip: redisUrl === null },
    async () => {
      const counted = await withFaultySync(
        (command, send) => {
          // The sync script runs in Redis, but the store sees a timeout.
          const sent = send();
          command.reject(new Error("Command timed out (test)"));
          return sent;
        },
        async (running, late) => {
          late.on = true;
          const body = { email: "limit-late@hillvalley.edu" };
          for (let i = 0; i < 3; i++) {
            assert.equal((await postIdentify(running.url, body)).status, 200);
          }
          await sleep(200);
          late.on = false;
          await sleep(1300); // the batch is sent again, once Redis seems back
        },
      );
      assert.equal(counted, "3", "not 6: the batch counted twice");
    },
  );

  it("cuts off a client that trickles its request (slow loris) within the request timeout", async () => {
    const running = await startApp(suite.database, {
      security: security({ requestTimeoutMs: 1000 }),
    });
    try {
      const { port } = new URL(running.url);
      const socket = connect(Number(port), "127.0.0.1");
      const started = Date.now();
      const closed = new Promise<number>((resolve) => {
        socket.on("close", () => {
          resolve(Date.now() - started);
        });
      });
      socket.on("error", () => undefined);
      const header = "POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
      let i = 0;
      const timer = setInterval(() => {
        if (!socket.destroyed && i < header.length) {
          socket.write(header[i++] ?? "");
        }
      }, 100);
      const elapsed = await closed;
      clearInterval(timer);
      assert.ok(elapsed >= 900 && elapsed < 3000, `closed after ${elapsed} ms`);
    } finally {
      await running.close();
    }
  });

  it("answers 503 when the handler does not answer within its timeout", async () => {
    let slow = false;
    const running = await startApp(suite.database, {
      security: security({ handlerTimeoutMs: 200 }),
      service: {
        beforeCacheFill: async () => {
          if (slow) {
            await sleep(600);
          }
        },
      },
    });
    // Created elsewhere, so that this instance reads it from the suite.database (and then waits).
    const elsewhere = await startApp(suite.database, { cache: new NoCache() });
    try {
      const body = { email: "slow@hillvalley.edu" };
      assert.equal((await postIdentify(elsewhere.url, body)).status, 200);
      assert.equal((await postIdentify(running.url, body)).status, 200); // learns the index
      slow = true;
      const started = Date.now();
      const response = await postIdentify(running.url, { email: "slow@hillvalley.edu" });
      assert.equal(response.status, 503);
      assert.deepEqual(response.body, {
        error: "Service unavailable.",
        requestId: response.headers.get("x-request-id"),
      });
      assert.ok(Date.now() - started < 550, "answered at the timeout, not when the work ended");
    } finally {
      await elsewhere.close();
      await running.close();
    }
  });

  it("sends security headers, no X-Powered-By, and no CORS headers unless origins are configured", async () => {
    const closed = await startApp(suite.database);
    const open = await startApp(suite.database, {
      security: security({ corsOrigins: ["https://shop.example.com"] }),
    });
    try {
      const response = await fetch(`${closed.url}/healthz`, {
        headers: { origin: "https://evil.example.com" },
      });
      assert.equal(response.headers.get("x-content-type-options"), "nosniff");
      assert.ok(response.headers.get("strict-transport-security"));
      assert.ok(response.headers.get("x-frame-options"));
      assert.equal(response.headers.get("x-powered-by"), null);
      assert.equal(response.headers.get("access-control-allow-origin"), null);

      const preflight = await fetch(`${open.url}/identify`, {
        method: "OPTIONS",
        headers: {
          origin: "https://shop.example.com",
          "access-control-request-method": "POST",
          "access-control-request-headers": "content-type",
        },
      });
      assert.equal(
        preflight.headers.get("access-control-allow-origin"),
        "https://shop.example.com",
      );
      const other = await fetch(`${open.url}/healthz`, {
        headers: { origin: "https://evil.example.com" },
      });
      assert.equal(other.headers.get("access-control-allow-origin"), null);
    } finally {
      await closed.close();
      await open.close();
    }
  });

  it("logs no email or phone in clear at info level", async () => {
    const running = await startApp(suite.database);
    try {
      const emails = ["privacy.one@hillvalley.edu", "privacy.two@hillvalley.edu"];
      const phones = ["5550123987", "5550456987"];
      await postIdentify(running.url, { email: emails[0], phoneNumber: phones[0] });
      await postIdentify(running.url, { email: emails[1], phoneNumber: phones[0] });
      await postIdentify(running.url, { email: emails[0], phoneNumber: phones[1] });
      await postIdentify(running.url, { [emails[1] ?? ""]: phones[1] }); // values as a key
      await postIdentify(running.url, { email: `${emails[0]}' or 1=1 --` });
      await postIdentify(running.url, { email: "not-an-email", phoneNumber: phones[1] });
      await postIdentify(running.url, {}, { raw: `{"email":"${emails[1]}"` });
      const text = JSON.stringify(running.logs);
      assert.ok(running.logs.length >= 4, "the rejections were logged");
      for (const value of [...emails, ...phones]) {
        assert.ok(!text.includes(value), `${value} appears in the log`);
      }
    } finally {
      await running.close();
    }
  });
});
