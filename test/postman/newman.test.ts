import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { startServer } from "../support/server.js";
import type { ServerProcess } from "../support/server.js";

/** The part of newman's programmatic API this test uses (newman ships no type declarations). */
interface Newman {
  run(
    options: NewmanRunOptions,
    callback: (error: Error | null, summary: NewmanSummary) => void,
  ): void;
}

interface NewmanRunOptions {
  readonly collection: string;
  readonly envVar: readonly { readonly key: string; readonly value: string }[];
  readonly reporters: readonly string[];
  readonly timeoutRequest: number;
}

interface NewmanFailure {
  readonly at: string;
  readonly error: { readonly message: string; readonly test?: string };
  readonly source?: { readonly name?: string };
}

interface NewmanSummary {
  readonly run: {
    readonly stats: {
      readonly requests: { readonly total: number; readonly failed: number };
      readonly assertions: { readonly total: number; readonly failed: number };
    };
    readonly failures: readonly NewmanFailure[];
    readonly error: unknown;
  };
}

// newman is CommonJS without types: load it through require and give it the interface above.
const newman = createRequire(import.meta.url)("newman") as unknown as Newman;

const COLLECTION = fileURLToPath(
  new URL("../../postman/emotorad.postman_collection.json", import.meta.url),
);

/** Runs the collection against `baseUrl` with no reporter output and resolves with its summary. */
function runCollection(baseUrl: string): Promise<NewmanSummary> {
  return new Promise((resolve, reject) => {
    newman.run(
      {
        collection: COLLECTION,
        envVar: [{ key: "baseUrl", value: baseUrl }],
        reporters: [],
        timeoutRequest: 10_000,
      },
      (error, summary) => {
        if (error !== null) {
          reject(error);
        } else {
          resolve(summary);
        }
      },
    );
  });
}

function describeFailure(failure: NewmanFailure): string {
  const request = failure.source?.name ?? "(no request)";
  const test = failure.error.test ?? failure.at;
  return `${request} › ${test}: ${failure.error.message}`;
}

function assertPassed(summary: NewmanSummary): void {
  const { run } = summary;
  assert.equal(run.error ?? null, null, `the run aborted: ${String(run.error)}`);
  assert.deepEqual(
    run.failures.map(describeFailure),
    [],
    `the collection failed:\n${run.failures.map(describeFailure).join("\n")}`,
  );
  assert.equal(run.stats.requests.failed, 0);
  // An emptied or truncated collection must not pass: 23 requests with 4 assertions each.
  assert.ok(
    run.stats.assertions.total >= 40,
    `only ${run.stats.assertions.total} assertions ran in ${run.stats.requests.total} requests`,
  );
}

describe("the Postman collection (postman/emotorad.postman_collection.json)", () => {
  let dir: string;
  let server: ServerProcess | undefined;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "idr-newman-"));
    server = await startServer({ DATABASE_URL: `sqlite:${join(dir, "contacts.db")}` });
  });

  after(async () => {
    try {
      if (server !== undefined) {
        assert.equal(await server.stop(), 0);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("passes every assertion against a real server", async () => {
    assert.ok(server);
    assertPassed(await runCollection(server.url));
  });

  it("passes again on the same database: each run makes its own emails and phones", async () => {
    assert.ok(server);
    assertPassed(await runCollection(server.url));
  });
});
