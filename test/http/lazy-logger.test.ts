import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pino } from "pino";
import type { FastifyBaseLogger } from "fastify";
import { LazyChildLogger, lazyChildLoggerFactory } from "../../src/http/lazy-logger.js";
import { startApp } from "../support/app.js";
import { createTestDatabase, openMigrated } from "../support/databases.js";
import { postIdentify } from "../support/server.js";

/** A pino logger writing its lines to `lines`, with the count of children made from it. */
function capturing(level = "info") {
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level, base: null, timestamp: false },
    { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  let children = 0;
  const child = logger.child.bind(logger);
  const counted = Object.assign(Object.create(logger) as typeof logger, {
    child: (...args: Parameters<typeof child>) => {
      children++;
      return child(...args);
    },
  });
  return { logger: counted as unknown as FastifyBaseLogger, lines, children: () => children };
}

describe("the request's lazy child logger", () => {
  it("makes no child until a line is written, then writes the child's lines", () => {
    const { logger, lines, children } = capturing();
    const lazy = new LazyChildLogger(logger, { requestId: "r-1" });
    assert.equal(lazy.level, "info");
    assert.equal(children(), 0);
    lazy.debug("below the level");
    assert.equal(children(), 1, "a call at any level makes the child (pino decides what to write)");
    assert.deepEqual(lines, []);
    lazy.error({ code: "E" }, "failed %s", "once");
    lazy.info("again");
    assert.equal(children(), 1);
    assert.deepEqual(lines, [
      { level: 50, requestId: "r-1", code: "E", msg: "failed once" },
      { level: 30, requestId: "r-1", msg: "again" },
    ]);
  });

  it("reads the level without making a child, and sets it on the child only", () => {
    const { logger, lines, children } = capturing("warn");
    const lazy = new LazyChildLogger(logger, { requestId: "r-2" });
    assert.equal(lazy.level, "warn");
    assert.equal(children(), 0);
    lazy.level = "debug";
    assert.equal(lazy.level, "debug");
    assert.equal(logger.level, "warn");
    lazy.debug("now written");
    assert.deepEqual(lines, [{ level: 20, requestId: "r-2", msg: "now written" }]);
  });

  it("writes each method at its own level", () => {
    const { logger, lines } = capturing("trace");
    const lazy = new LazyChildLogger(logger, { requestId: "r-4" });
    lazy.trace("t");
    lazy.debug("d");
    lazy.info("i");
    lazy.warn("w");
    lazy.error("e");
    lazy.fatal("f");
    lazy.silent("s");
    assert.deepEqual(
      lines.map((line) => [line.level, line.msg]),
      [
        [10, "t"],
        [20, "d"],
        [30, "i"],
        [40, "w"],
        [50, "e"],
        [60, "f"],
      ],
    );
  });

  it("binds grandchildren to the request too", () => {
    const { logger, lines } = capturing();
    new LazyChildLogger(logger, { requestId: "r-3" }).child({ part: "cache" }).warn("slow");
    assert.deepEqual(lines, [{ level: 40, requestId: "r-3", part: "cache", msg: "slow" }]);
  });

  it("is used only where the route has no log level or serializers of its own", () => {
    const { logger } = capturing();
    const factory = lazyChildLoggerFactory.bind(null as never);
    const raw = {} as never;
    assert.ok(factory(logger, { requestId: "a" }, {}, raw) instanceof LazyChildLogger);
    const own = factory(logger, { requestId: "b" }, { level: "debug" }, raw);
    assert.ok(!(own instanceof LazyChildLogger));
    assert.equal(own.level, "debug");
    const serialized = factory(
      logger,
      { requestId: "c" },
      { serializers: { secret: () => "[hidden]" } },
      raw,
    );
    assert.ok(!(serialized instanceof LazyChildLogger));
  });

  it("is the app's: a rejected request's line carries its request id", async () => {
    const test = await createTestDatabase("sqlite");
    const database = await openMigrated(test);
    const running = await startApp(database);
    try {
      assert.equal(running.app.childLoggerFactory, lazyChildLoggerFactory);
      const response = await postIdentify(running.url, { email: 42 });
      assert.equal(response.status, 400);
      const requestId = response.headers.get("x-request-id");
      assert.ok(requestId);
      assert.ok(running.logs.some((line) => line.requestId === requestId));
    } finally {
      await running.close();
      await database.destroy();
      await test.drop();
    }
  });
});
